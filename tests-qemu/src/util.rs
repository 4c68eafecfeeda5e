//! Paths, bounded command execution, cancellation (Ctrl-C) and process clean-up.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Set by the Ctrl-C handler; every wait loop checks it and unwinds (running the clean-up guards).
pub static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Install the Ctrl-C / SIGTERM handler that sets [`CANCELLED`].
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if CANCELLED.swap(true, Ordering::SeqCst) {
            eprintln!("xtask: interrupted twice, exiting at once");
            std::process::exit(130);
        }
        eprintln!("xtask: interrupted, cleaning up (emulators, namespaces, locks)...");
    })
    .context("installing the Ctrl-C handler")
}

/// Fail with an error when the run was interrupted.
pub fn check_cancelled() -> Result<()> {
    if CANCELLED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests-qemu has a parent directory")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The download cache: `$SHOJI_CACHE` or `tests-qemu/cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SHOJI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("tests-qemu").join("cache"))
}

/// The build output directory: `$SHOJI_BUILD_DIR` or `<root>/build` (images, `e2e/` logs).
pub fn build_dir() -> PathBuf {
    std::env::var_os("SHOJI_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build"))
}

/// The cargo executable that runs us (or `cargo`).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Render a command for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A child process in its own process group, killed with its whole group when dropped.
///
/// Own process group: Ctrl-C on the terminal reaches only the harness, which then kills the
/// group (Bochs's debugger would otherwise catch SIGINT and wait for input).
pub struct GroupChild {
    child: Child,
    what: String,
    done: bool,
}

impl GroupChild {
    /// Spawn `cmd` in a new process group.
    pub fn spawn(cmd: &mut Command) -> Result<GroupChild> {
        use std::os::unix::process::CommandExt;
        let what = show(cmd);
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(GroupChild {
            child,
            what,
            done: false,
        })
    }

    /// Non-blocking: has the process exited?
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let st = self.child.try_wait()?;
        if st.is_some() {
            self.done = true;
        }
        Ok(st)
    }

    /// Wait up to `timeout` for the process to exit by itself (less after Ctrl-C).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.wait_bounded(timeout, true)
    }

    /// Wait up to `timeout`; with `cancellable`, Ctrl-C ends the wait early.
    pub fn wait_bounded(
        &mut self,
        timeout: Duration,
        cancellable: bool,
    ) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        // Short commands end within milliseconds: poll from 1 ms up to every 100 ms.
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if start.elapsed() >= timeout
                || (cancellable && crate::util::CANCELLED.load(Ordering::SeqCst))
            {
                return Ok(None);
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(100));
        }
    }

    /// Kill the whole process group and reap the child.
    pub fn kill(&mut self) {
        if self.done {
            return;
        }
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }

    /// Mutable access to the inner child (for its pipes).
    pub fn inner(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The command line, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of a bounded command.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output and standard error, interleaved per stream (stdout first).
    pub text: String,
}

/// Run `cmd` with a time limit, capturing stdout and stderr; the process group is killed on
/// timeout or Ctrl-C.
pub fn run_capture(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    capture(cmd, timeout, true)
}

/// Like [`run_capture`], but runs to the end after Ctrl-C: for clean-up commands.
pub fn run_cleanup(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    capture(cmd, timeout, false)
}

fn capture(cmd: &mut Command, timeout: Duration, cancellable: bool) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = GroupChild::spawn(cmd)?;
    let mut out_pipe = child.inner().stdout.take().expect("piped");
    let mut err_pipe = child.inner().stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let status = child.wait_bounded(timeout, cancellable)?;
    let what = child.what().to_owned();
    if status.is_none() {
        child.kill();
    }
    let mut text = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(&t_err.join().unwrap_or_default()));
    if cancellable {
        check_cancelled()?;
    }
    match status {
        Some(status) => Ok(Output { status, text }),
        None => Err(anyhow!(
            "timed out after {}s: {what}\n{text}",
            timeout.as_secs()
        )),
    }
}

/// Run `cmd` with a time limit; fail unless it exits 0. Returns its output.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let what = show(cmd);
    let out = run_capture(cmd, timeout)?;
    if !out.status.success() {
        bail!("command failed ({}): {what}\n{}", out.status, out.text);
    }
    Ok(out.text)
}

/// Run `cmd` with a time limit, its output going straight to ours (for cargo and CI steps).
pub fn run_visible(cmd: &mut Command, timeout: Duration) -> Result<ExitStatus> {
    cmd.stdin(Stdio::null());
    let mut child = GroupChild::spawn(cmd)?;
    let status = child.wait_timeout(timeout)?;
    check_cancelled()?;
    match status {
        Some(st) => Ok(st),
        None => {
            let what = child.what().to_owned();
            child.kill();
            bail!("timed out after {}s: {what}", timeout.as_secs())
        }
    }
}

/// Shorthand for `Command::new(prog).args(args)`.
pub fn cmd<I, S>(prog: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// Format a duration as seconds with one decimal.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
