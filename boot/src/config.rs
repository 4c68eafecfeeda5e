//! The configuration file `shoji.cfg`, read from the directory `shoji.efi` was started from.
//!
//! One `key = value` per line; `#` starts a comment; blank lines are ignored; unknown keys,
//! repeated keys and bad values are errors (a typo must not silently weaken protection).
//!
//! | key | value | default |
//! |---|---|---|
//! | `image` | path of the next EFI image on the same volume (`\vmlinuz`, `\EFI\debian\shimx64.efi`), or `none` | required |
//! | `cmdline` | load options passed to the image (a kernel command line) | empty |
//! | `fail_mode` | `open` (boot unprotected when Shoji cannot start) or `closed` (refuse to boot) | `closed` |
//! | `log_level` | `error`, `warn`, `info`, `debug`, `trace` | `info` |
//! | `log_port` | I/O port of Shoji's log UART (`0x2f8` = COM2), `0` for none | `0x2f8` |
//! | `agent_key` | 64 hex digits: the key the guest agent proves for privileged calls | none (privileged calls refused) |
//! | `expose_hypervisor_memory` | `true` leaves Shoji's memory visible to the guest: TEST ONLY | `false` |
//! | `mediate_nic` | `false` leaves the e1000 to the guest unmediated (comparison measurements only: no shadow rings, no policy) | `true` |
//! | `mgmt_ip` | Shoji's own IPv4 address on the mediated NIC, `a.b.c.d/len`: turns the management endpoint on | none (no endpoint) |
//! | `mgmt_gateway` | the router for answers to administrators outside `mgmt_ip`'s network | none |
//! | `mgmt_mac` | Shoji's MAC (unicast, `xx:xx:xx:xx:xx:xx`) | the NIC's with the locally administered bit set and the last byte's top bit flipped |
//! | `mgmt_port` | the HTTP port | `9180` |
//! | `mgmt_allow` | comma-separated networks (`a.b.c.d/len`) allowed to connect, at most 8 | any |
//! | `mgmt_key` | 64 hex digits: the administrator's key for signed requests; must differ from `agent_key` | none (signed requests refused) |
//! | `mgmt_metrics_auth` | `true`: `/metrics` must be signed too | `false` |

use alloc::string::{String, ToString};
use core::fmt;
use shoji_mgmt::settings::{parse_ipv4, Cidr, MAX_ALLOW};
use shoji_mgmt::Settings;

/// What to do when Shoji cannot protect the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Boot the configured image unprotected, saying so on the console.
    Open,
    /// Refuse to boot.
    Closed,
}

/// The image to start after Shoji is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextImage {
    /// A path on the volume Shoji was loaded from.
    Path(String),
    /// Start nothing (tests that only need Shoji itself).
    None,
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Image to start.
    pub image: NextImage,
    /// Its load options.
    pub cmdline: String,
    /// Fail mode.
    pub fail_mode: FailMode,
    /// Log level 0 (error) to 4 (trace).
    pub log_level: u8,
    /// Log UART port.
    pub log_port: u16,
    /// The agent key, if provisioned.
    pub agent_key: Option<[u8; 32]>,
    /// Test-only: do not hide Shoji's memory.
    pub expose_hypervisor_memory: bool,
    /// Mediate the e1000 with shadow rings (`false` only for comparison measurements).
    pub mediate_nic: bool,
    /// The management endpoint (`mgmt_*`; `enabled` 0 when `mgmt_ip` is not set). The boot
    /// id is filled in when Shoji starts.
    pub mgmt: Settings,
}

impl Config {
    /// The management settings with this boot's id.
    pub fn mgmt_settings(&self, boot_id: [u8; 16]) -> Settings {
        Settings {
            boot_id,
            ..self.mgmt
        }
    }
}

/// A configuration error: the line (1-based, 0 = whole file) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number, 0 when not tied to a line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

fn err(line: usize, message: impl ToString) -> ConfigError {
    ConfigError {
        line,
        message: message.to_string(),
    }
}

const KEYS: [&str; 15] = [
    "image",
    "cmdline",
    "fail_mode",
    "log_level",
    "log_port",
    "agent_key",
    "expose_hypervisor_memory",
    "mediate_nic",
    "mgmt_ip",
    "mgmt_gateway",
    "mgmt_mac",
    "mgmt_port",
    "mgmt_allow",
    "mgmt_key",
    "mgmt_metrics_auth",
];

/// The default port of the management endpoint.
pub const MGMT_PORT: u16 = 9180;

/// Parse the configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut seen = [false; KEYS.len()];
    let mut image = None;
    let mut cfg = Config {
        image: NextImage::None,
        cmdline: String::new(),
        fail_mode: FailMode::Closed,
        log_level: 2,
        log_port: 0x2f8,
        agent_key: None,
        expose_hypervisor_memory: false,
        mediate_nic: true,
        mgmt: Settings {
            port: MGMT_PORT,
            ..Settings::default()
        },
    };
    // The first line of each `mgmt_*` key, for errors that need `mgmt_ip`.
    let mut mgmt_line = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = raw.trim_start_matches('\u{feff}').trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let (key, value) = content
            .split_once('=')
            .ok_or_else(|| err(line, "expected `key = value`"))?;
        let key = key.trim();
        let value = value.trim();
        let idx = KEYS
            .iter()
            .position(|k| *k == key)
            .ok_or_else(|| err(line, alloc::format!("unknown key `{key}`")))?;
        if core::mem::replace(&mut seen[idx], true) {
            return Err(err(line, alloc::format!("`{key}` is given twice")));
        }
        match key {
            "image" => {
                if value.is_empty() {
                    return Err(err(line, "`image` is empty"));
                }
                image = Some(if value == "none" {
                    NextImage::None
                } else {
                    NextImage::Path(normalize_path(value))
                });
            }
            "cmdline" => cfg.cmdline = value.to_string(),
            "fail_mode" => {
                cfg.fail_mode = parse_fail_mode(value)
                    .ok_or_else(|| err(line, "`fail_mode` must be `open` or `closed`"))?
            }
            "log_level" => {
                cfg.log_level = match value {
                    "error" => 0,
                    "warn" => 1,
                    "info" => 2,
                    "debug" => 3,
                    "trace" => 4,
                    _ => {
                        return Err(err(
                            line,
                            "`log_level` must be error, warn, info, debug or trace",
                        ))
                    }
                }
            }
            "log_port" => {
                cfg.log_port = parse_u64(value)
                    .and_then(|v| u16::try_from(v).ok())
                    .ok_or_else(|| err(line, "`log_port` must be an I/O port number (0-0xffff)"))?
            }
            "agent_key" => cfg.agent_key = Some(parse_key(value).map_err(|m| err(line, m))?),
            "expose_hypervisor_memory" => {
                cfg.expose_hypervisor_memory = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(err(
                            line,
                            "`expose_hypervisor_memory` must be true or false",
                        ))
                    }
                }
            }
            "mediate_nic" => {
                cfg.mediate_nic = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(err(line, "`mediate_nic` must be true or false")),
                }
            }
            "mgmt_ip" => {
                let c = Cidr::parse(value)
                    .filter(|c| value.contains('/') && c.prefix >= 1 && c.addr != [0; 4])
                    .ok_or_else(|| err(line, "`mgmt_ip` must be an IPv4 address with its prefix length, `a.b.c.d/len`"))?;
                cfg.mgmt.ip = c;
                cfg.mgmt.enabled = 1;
            }
            "mgmt_gateway" => {
                cfg.mgmt.gateway = parse_ipv4(value)
                    .ok_or_else(|| err(line, "`mgmt_gateway` must be an IPv4 address"))?;
                cfg.mgmt.gateway_set = 1;
                mgmt_line = mgmt_line.max(line);
            }
            "mgmt_mac" => {
                let mac = parse_mac(value).ok_or_else(|| {
                    err(line, "`mgmt_mac` must be a unicast MAC address, `xx:xx:xx:xx:xx:xx`, not all zeros")
                })?;
                cfg.mgmt.mac = mac;
                mgmt_line = mgmt_line.max(line);
            }
            "mgmt_port" => {
                cfg.mgmt.port = value
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err(line, "`mgmt_port` must be a TCP port (1-65535)"))?;
                mgmt_line = mgmt_line.max(line);
            }
            "mgmt_allow" => {
                let mut n = 0;
                for part in value.split(',') {
                    let c = Cidr::parse(part.trim()).ok_or_else(|| {
                        err(
                            line,
                            alloc::format!(
                                "`mgmt_allow`: `{}` is not a network `a.b.c.d/len`",
                                part.trim()
                            ),
                        )
                    })?;
                    if n == MAX_ALLOW {
                        return Err(err(
                            line,
                            alloc::format!("`mgmt_allow` takes at most {MAX_ALLOW} networks"),
                        ));
                    }
                    cfg.mgmt.allow[n] = c;
                    n += 1;
                }
                cfg.mgmt.allow_count = n as u8;
                mgmt_line = mgmt_line.max(line);
            }
            "mgmt_key" => {
                cfg.mgmt.key =
                    parse_key(value).map_err(|m| err(line, m.replace("agent_key", "mgmt_key")))?;
                cfg.mgmt.key_set = 1;
                mgmt_line = mgmt_line.max(line);
            }
            "mgmt_metrics_auth" => {
                cfg.mgmt.metrics_auth = match value {
                    "true" => 1,
                    "false" => 0,
                    _ => return Err(err(line, "`mgmt_metrics_auth` must be true or false")),
                };
                mgmt_line = mgmt_line.max(line);
            }
            // Every name in KEYS is handled above.
            _ => {}
        }
    }
    cfg.image =
        image.ok_or_else(|| err(0, "`image` is missing (name the next EFI image, or `none`)"))?;
    if cfg.mgmt.enabled == 0 && mgmt_line != 0 {
        return Err(err(
            mgmt_line,
            "`mgmt_*` settings need `mgmt_ip` (Shoji's address)",
        ));
    }
    if cfg.mgmt.gateway_set != 0 && !cfg.mgmt.ip.contains(cfg.mgmt.gateway) {
        return Err(err(0, "`mgmt_gateway` must lie in `mgmt_ip`'s network"));
    }
    if cfg.mgmt.key_set != 0 && cfg.agent_key == Some(cfg.mgmt.key) {
        return Err(err(
            0,
            "`mgmt_key` must differ from `agent_key` (root in the guest can read the agent key)",
        ));
    }
    Ok(cfg)
}

/// Find the fail mode in a configuration that does not parse as a whole, so that a broken file
/// still honours the operator's choice when it can be read.
pub fn fail_mode_hint(text: &str) -> Option<FailMode> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "fail_mode").then(|| parse_fail_mode(v.trim()))?
    })
}

fn parse_fail_mode(v: &str) -> Option<FailMode> {
    match v {
        "open" => Some(FailMode::Open),
        "closed" => Some(FailMode::Closed),
        _ => None,
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        v.parse().ok()
    }
}

fn parse_key(v: &str) -> Result<[u8; 32], &'static str> {
    if v.len() != 64 {
        return Err("`agent_key` must be 64 hex digits (32 bytes)");
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&v[2 * i..2 * i + 2], 16)
            .map_err(|_| "`agent_key` must be 64 hex digits (32 bytes)")?;
    }
    if key.iter().all(|b| *b == 0) {
        return Err("`agent_key` must not be all zeros");
    }
    Ok(key)
}

/// What replaces the `mgmt_key` line once the key is in the firmware (padded with spaces to
/// the line's length, so the file keeps its size and is rewritten in place).
pub const KEY_STORED_NOTE: &str = "# mgmt_key moved into the firmware (variable ShojiAdminKey)";

/// The configuration text with its `mgmt_key` line replaced by [`KEY_STORED_NOTE`], byte for
/// byte the same length (so that rewriting the file overwrites the key where it lay on the
/// disk), or `None` when there is no such line or it is too short to hold the note.
pub fn redact_mgmt_key(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let is_key = body
            .trim_start_matches('\u{feff}')
            .trim()
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == "mgmt_key");
        if is_key {
            if body.len() < KEY_STORED_NOTE.len() {
                return None;
            }
            found = true;
            out.push_str(KEY_STORED_NOTE);
            out.extend(core::iter::repeat_n(
                ' ',
                body.len() - KEY_STORED_NOTE.len(),
            ));
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

/// `xx:xx:xx:xx:xx:xx` (or with `-`), unicast and not all zeros.
fn parse_mac(v: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = v.split([':', '-']);
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

/// Use UEFI's backslashes and make the path absolute.
fn normalize_path(p: &str) -> String {
    let p = p.replace('/', "\\");
    if p.starts_with('\\') {
        p
    } else {
        alloc::format!("\\{p}")
    }
}

/// The directory part of a UEFI file path (`\EFI\BOOT\BOOTX64.EFI` -> `\EFI\BOOT`).
pub fn directory_of(path: &str) -> &str {
    match path.rfind('\\') {
        Some(i) => &path[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "# Shoji\n\
        image = \\vmlinuz\n\
        cmdline = initrd=\\initrd.img console=ttyS0 quiet\n\
        fail_mode = open\n\
        log_level = debug\n\
        log_port = 0x3f8\n\
        agent_key = 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
        expose_hypervisor_memory = false\n\
        mediate_nic = false\n";

    #[test]
    fn full_config_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.image, NextImage::Path("\\vmlinuz".into()));
        assert_eq!(c.cmdline, "initrd=\\initrd.img console=ttyS0 quiet");
        assert_eq!(c.fail_mode, FailMode::Open);
        assert_eq!(c.log_level, 3);
        assert_eq!(c.log_port, 0x3f8);
        assert_eq!(c.agent_key.unwrap()[1], 0x11);
        assert!(!c.expose_hypervisor_memory);
        assert!(!c.mediate_nic);
    }

    #[test]
    fn defaults_are_safe() {
        let c = parse("image = EFI/debian/grubx64.efi").unwrap();
        assert_eq!(
            c.image,
            NextImage::Path("\\EFI\\debian\\grubx64.efi".into())
        );
        assert_eq!(c.fail_mode, FailMode::Closed);
        assert_eq!(c.agent_key, None);
        assert_eq!(c.log_port, 0x2f8);
        assert!(
            c.mediate_nic,
            "the NIC is mediated unless the operator says otherwise"
        );
        assert_eq!(parse("image = none\r\n").unwrap().image, NextImage::None);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("image = a\nfoo = 1", 2, "unknown key"),
            ("image = a\nimage = b", 2, "twice"),
            ("image = a\nfail_mode = maybe", 2, "open"),
            ("image = a\njust text", 2, "key = value"),
            ("image = a\nagent_key = 1234", 2, "64 hex"),
            ("image = a\nagent_key = zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 2, "64 hex"),
            ("image = a\nagent_key = 0000000000000000000000000000000000000000000000000000000000000000", 2, "zeros"),
            ("image = a\nlog_port = 0x10000", 2, "port"),
            ("image = a\nexpose_hypervisor_memory = yes", 2, "true or false"),
            ("image = a\nmediate_nic = off", 2, "true or false"),
            ("image =", 1, "empty"),
            ("fail_mode = open", 0, "missing"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn fail_mode_survives_a_broken_file() {
        assert_eq!(
            fail_mode_hint("fail_mode = open\nbroken line"),
            Some(FailMode::Open)
        );
        assert_eq!(fail_mode_hint("garbage"), None);
        assert_eq!(fail_mode_hint("fail_mode = sideways"), None);
    }

    #[test]
    fn directories() {
        assert_eq!(directory_of("\\EFI\\BOOT\\BOOTX64.EFI"), "\\EFI\\BOOT");
        assert_eq!(directory_of("\\shoji.efi"), "");
        assert_eq!(directory_of("shoji.efi"), "");
    }
}

#[cfg(test)]
mod mgmt_tests {
    use super::*;

    const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn the_endpoint_is_off_unless_mgmt_ip_is_set() {
        let c = parse("image = none").unwrap();
        assert_eq!(c.mgmt.enabled, 0);
        assert_eq!(c.mgmt.port, MGMT_PORT);
    }

    #[test]
    fn every_mgmt_key_parses() {
        let text = alloc::format!(
            "image = none\nagent_key = {KEY_A}\nmgmt_ip = 10.0.2.9/24\nmgmt_gateway = 10.0.2.1\n\
             mgmt_mac = 02:54:00:12:34:d6\nmgmt_port = 8080\nmgmt_allow = 10.0.2.2/32, 192.168.0.0/16\n\
             mgmt_key = {KEY_B}\nmgmt_metrics_auth = true\n"
        );
        let c = parse(&text).unwrap();
        let m = c.mgmt_settings([9; 16]);
        assert_eq!(m.enabled, 1);
        assert_eq!(
            m.ip,
            Cidr {
                addr: [10, 0, 2, 9],
                prefix: 24
            }
        );
        assert_eq!((m.gateway_set, m.gateway), (1, [10, 0, 2, 1]));
        assert_eq!(m.mac, [0x02, 0x54, 0, 0x12, 0x34, 0xd6]);
        assert_eq!(m.port, 8080);
        assert_eq!(m.allow_count, 2);
        assert!(m.allowed([10, 0, 2, 2]) && m.allowed([192, 168, 7, 7]));
        assert!(!m.allowed([10, 0, 2, 3]));
        assert_eq!((m.key_set, m.key[0]), (1, 0xff));
        assert_eq!(m.metrics_auth, 1);
        assert_eq!(m.boot_id, [9; 16]);
    }

    #[test]
    fn mgmt_errors_name_the_line() {
        let cases = [
            ("image = a\nmgmt_ip = 10.0.2.9", 2, "prefix length"),
            ("image = a\nmgmt_ip = 10.0.2.9/33", 2, "prefix length"),
            ("image = a\nmgmt_ip = 0.0.0.0/24", 2, "prefix length"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_gateway = 10.0.2", 3, "IPv4"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_gateway = 10.0.3.1", 0, "network"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_mac = 01:00:5e:00:00:01", 3, "unicast"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_mac = 00:00:00:00:00:00", 3, "unicast"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_mac = 02:54:00:12:34", 3, "unicast"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_port = 0", 3, "TCP port"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_port = 70000", 3, "TCP port"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_allow = 10.0.2.2/32,,", 3, "not a network"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_allow = 1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4,5.5.5.5,6.6.6.6,7.7.7.7,8.8.8.8,9.9.9.9", 3, "at most 8"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_key = 12", 3, "`mgmt_key` must be 64 hex"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_metrics_auth = yes", 3, "true or false"),
            ("image = a\nmgmt_port = 8080", 2, "need `mgmt_ip`"),
            ("image = a\nmgmt_ip = 10.0.2.9/24\nmgmt_ip = 10.0.2.8/24", 3, "twice"),
        ];
        for (text, line, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(want), "{text}: {e}");
        }
        let same = alloc::format!(
            "image = a\nagent_key = {KEY_A}\nmgmt_ip = 10.0.2.9/24\nmgmt_key = {KEY_A}"
        );
        assert!(parse(&same)
            .unwrap_err()
            .message
            .contains("differ from `agent_key`"));
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    const KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn the_key_line_becomes_a_note_of_the_same_length() {
        let text = alloc::format!(
            "image = none\r\nmgmt_ip = 10.0.2.9/24\r\nmgmt_key = {KEY}\r\nmgmt_port = 8080\n"
        );
        let out = redact_mgmt_key(&text).unwrap();
        assert_eq!(out.len(), text.len());
        assert!(!out.contains(KEY));
        assert!(out.contains(KEY_STORED_NOTE));
        assert!(out.contains("\r\nmgmt_port = 8080\n"));
        let c = parse(&out).unwrap();
        assert_eq!(c.mgmt.key_set, 0, "the key is no longer in the file");
        assert_eq!(c.mgmt.port, 8080);
        assert_eq!(redact_mgmt_key(&out), None, "nothing left to redact");
    }

    #[test]
    fn no_key_line_or_a_short_one() {
        assert_eq!(
            redact_mgmt_key("image = none\nmgmt_ip = 10.0.2.9/24\n"),
            None
        );
        assert_eq!(redact_mgmt_key("image = none\nmgmt_key=1"), None);
        let last = alloc::format!("image = none\nmgmt_key = {KEY}");
        assert_eq!(redact_mgmt_key(&last).unwrap().len(), last.len());
    }
}
