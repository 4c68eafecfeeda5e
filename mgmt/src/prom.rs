//! The Prometheus text exposition format (version 0.0.4): `# HELP`, `# TYPE`, then samples with
//! escaped label values. Names follow Prometheus conventions (`shoji_` prefix, base units,
//! `_total` for counters); the writer checks names in debug builds and tests.

use core::fmt::{self, Write};

/// The Content-Type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Whether `name` is a valid metric or label name (`[a-zA-Z_:][a-zA-Z0-9_:]*`, no `:` in labels).
pub fn valid_name(name: &str, label: bool) -> bool {
    let mut bytes = name.bytes();
    let ok_first = |c: u8| c.is_ascii_alphabetic() || c == b'_' || (!label && c == b':');
    let ok_rest = |c: u8| ok_first(c) || c.is_ascii_digit();
    bytes.next().is_some_and(ok_first) && bytes.all(ok_rest)
}

/// Writes families and samples to any `fmt::Write`.
pub struct Exposition<'w> {
    out: &'w mut dyn Write,
}

impl<'w> Exposition<'w> {
    /// An exposition into `out`.
    pub fn new(out: &'w mut dyn Write) -> Self {
        Exposition { out }
    }

    /// Start a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> fmt::Result {
        debug_assert!(valid_name(name, false), "{name}");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
        self.out.write_str("# HELP ")?;
        self.out.write_str(name)?;
        self.out.write_char(' ')?;
        for c in help.chars() {
            match c {
                '\\' => self.out.write_str("\\\\")?,
                '\n' => self.out.write_str("\\n")?,
                c => self.out.write_char(c)?,
            }
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        write!(self.out, "\n# TYPE {name} {kind}\n")
    }

    /// One sample of the family just started.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &dyn fmt::Display)],
        value: u64,
    ) -> fmt::Result {
        self.out.write_str(name)?;
        if !labels.is_empty() {
            self.out.write_char('{')?;
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_name(k, true), "{k}");
                if i > 0 {
                    self.out.write_char(',')?;
                }
                self.out.write_str(k)?;
                self.out.write_str("=\"")?;
                write!(Escaped(&mut *self.out), "{v}")?;
                self.out.write_char('"')?;
            }
            self.out.write_char('}')?;
        }
        writeln!(self.out, " {value}")
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) -> fmt::Result {
        self.family(name, kind, help)?;
        self.sample(name, &[], value)
    }
}

/// Escapes a label value (`\`, `"` and newline) on the way through.
struct Escaped<'a>(&'a mut dyn Write);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.0.write_str("\\\\")?,
                '"' => self.0.write_str("\\\"")?,
                '\n' => self.0.write_str("\\n")?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::String;

    #[test]
    fn families_and_escaped_labels() {
        let mut s = String::new();
        let mut e = Exposition::new(&mut s);
        e.family("shoji_frames_total", Kind::Counter, "Frames.\nTwo \\ lines")
            .unwrap();
        e.sample(
            "shoji_frames_total",
            &[("container", &"a\"b\\c\nd"), ("dir", &"tx")],
            3,
        )
        .unwrap();
        e.single("shoji_up", Kind::Gauge, "Up.", 1).unwrap();
        assert_eq!(
            s,
            "# HELP shoji_frames_total Frames.\\nTwo \\\\ lines\n# TYPE shoji_frames_total counter\n\
             shoji_frames_total{container=\"a\\\"b\\\\c\\nd\",dir=\"tx\"} 3\n\
             # HELP shoji_up Up.\n# TYPE shoji_up gauge\nshoji_up 1\n"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("shoji_a:b_1", false));
        assert!(!valid_name("shoji_a:b", true));
        assert!(!valid_name("1a", false));
        assert!(!valid_name("", false));
        assert!(!valid_name("a-b", false));
    }
}
