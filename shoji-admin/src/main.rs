//! shoji-admin is the data-centre administrator's command-line client for Shoji's management
//! endpoint: it runs on the administrator's machine (not in the guest), talks HTTP/1.1 to the
//! address Shoji owns on the shared NIC, signs every request with the admin key as
//! `shoji_mgmt::auth` defines it (after asking `GET /nonce` for the boot id and the smallest
//! nonce), and prints what Shoji answers: the nonce, Prometheus metrics, events, containers, or
//! the answer to any raw request. It exits 0 only on a 2xx answer, 2 on any other status, 3 when
//! Shoji cannot be reached, 4 when the answer is malformed and 1 for a local problem (command
//! line, key file, output).
#![forbid(unsafe_code)]

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shoji_admin::error::{EXIT_LOCAL, EXIT_OK};
use shoji_admin::{load_key, Client, Error};
use shoji_mgmt::auth::hex;

const EXIT_HELP: &str = "\
Exit status: 0 on a 2xx answer; 1 for a local problem (command line, key file, output);
2 when Shoji answered with another status; 3 when Shoji cannot be reached (or no complete
answer came within --timeout); 4 when the answer is malformed.";

#[derive(Parser)]
#[command(
    name = "shoji-admin",
    version,
    about = "The data-centre administrator's client for Shoji's management endpoint",
    after_help = EXIT_HELP
)]
struct Cli {
    /// Shoji's management address, HOST:PORT (required).
    #[arg(
        long,
        env = "SHOJI_ADMIN_ADDR",
        value_name = "HOST:PORT",
        global = true
    )]
    addr: Option<String>,
    /// The admin key: a file holding 64 hex digits.
    #[arg(long, env = "SHOJI_ADMIN_KEY_FILE", value_name = "PATH", global = true)]
    key_file: Option<PathBuf>,
    /// Send unsigned requests (no key file is read).
    #[arg(long, global = true)]
    no_key: bool,
    /// The longest one request may take, connection to last byte of the answer.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = seconds, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print GET /nonce (unsigned): this boot's id and the smallest nonce Shoji accepts.
    Nonce,
    /// Print the Prometheus metrics exactly as received.
    Metrics,
    /// Print events (JSON lines), from event number --from on.
    Events {
        /// The first event wanted.
        #[arg(long, value_name = "N", default_value_t = 0)]
        from: u64,
        /// Keep polling for new events until killed.
        #[arg(long)]
        follow: bool,
        /// The pause between polls with --follow.
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = seconds)]
        interval: Duration,
    },
    /// Print the containers Shoji knows (JSON).
    Containers,
    /// Print the guest's processes as Shoji reads them from kernel memory: one JSON object per
    /// line (pid, uid, comm, executable inode, cgroup, namespaces, container), the last line
    /// `{"end":...}` saying whether the list is complete.
    Tasks {
        /// Each process's IPv4/IPv6 sockets too (protocol, state, local and remote endpoints).
        #[arg(long)]
        sockets: bool,
    },
    /// Add an administrator rule (POST /block): frames it matches are dropped, whatever the
    /// party's own policy says, until `unblock`; prints the new rule's id (JSON). An --allow
    /// rule is an exception to the administrator's deny rules, never a widening of a
    /// container's own policy.
    Block(BlockArgs),
    /// Print the administrator's rules with their hit counts (JSON).
    Blocks,
    /// Remove administrator rule ID (DELETE /block/ID).
    Unblock {
        /// The rule's id, as `block` printed it or `blocks` lists it.
        id: u32,
    },
    /// Send one request; print the status line to stderr and the body to stdout.
    Request {
        /// The method, e.g. GET or POST.
        #[arg(value_parser = method)]
        method: String,
        /// The path with its query, e.g. /events?from=3.
        #[arg(value_parser = target)]
        path: String,
        /// The body.
        #[arg(long, value_name = "TEXT")]
        body: Option<String>,
        /// A Content-Type header.
        #[arg(long, value_name = "TYPE", value_parser = header_value)]
        content_type: Option<String>,
        /// Also write the exact bytes of the request sent to FILE.
        #[arg(long, value_name = "FILE")]
        save_request: Option<PathBuf>,
    },
}

/// What an administrator rule matches. Every option narrows it; at least one is required.
#[derive(clap::Args, Debug, Default)]
#[command(group = clap::ArgGroup::new("subject").multiple(false))]
struct BlockArgs {
    /// Whom it applies to: all (the host and every container), host, or a container's id. A
    /// container's rule also follows the addresses the container has now.
    #[arg(long, value_name = "all|host|ID", value_parser = form_value)]
    container: Option<String>,
    /// An exception to the administrator's deny rules instead of a deny rule.
    #[arg(long)]
    allow: bool,
    /// egress (sent by the party), ingress (delivered to it) or both (the default).
    #[arg(long, value_name = "DIRECTION", value_parser = ["egress", "ingress", "both"])]
    direction: Option<String>,
    /// any, arp, icmp, tcp, udp, ipv6 or an IP protocol number.
    #[arg(long, value_name = "PROTOCOL", value_parser = form_value)]
    protocol: Option<String>,
    /// The remote address: destination of what the party sends, source of what it receives.
    #[arg(long, value_name = "A.B.C.D[/N]", value_parser = form_value)]
    remote: Option<String>,
    /// Source port or range FIRST-LAST (needs --protocol tcp or udp).
    #[arg(long, value_name = "PORT[-PORT]", value_parser = form_value)]
    src_port: Option<String>,
    /// Destination port or range FIRST-LAST (needs --protocol tcp or udp).
    #[arg(long, value_name = "PORT[-PORT]", value_parser = form_value)]
    dst_port: Option<String>,
    /// Shorthand for --protocol tcp --dst-port PORT.
    #[arg(long, value_name = "PORT[-PORT]", value_parser = form_value, conflicts_with_all = ["protocol", "dst_port", "udp_dst_port"])]
    tcp_dst_port: Option<String>,
    /// Shorthand for --protocol udp --dst-port PORT.
    #[arg(long, value_name = "PORT[-PORT]", value_parser = form_value, conflicts_with_all = ["protocol", "dst_port"])]
    udp_dst_port: Option<String>,
    /// Only frames a task of this user sent (the real uid in the initial user namespace).
    #[arg(long, group = "subject")]
    uid: Option<u32>,
    /// Only frames a task of this process sent (thread-group id in the initial pid namespace).
    #[arg(long, group = "subject")]
    pid: Option<u32>,
    /// Only frames a task running this executable sent (its inode number: `stat -c %i`).
    #[arg(long, value_name = "INODE", group = "subject")]
    exe_inode: Option<u64>,
    /// Only frames a task with this command name sent (advisory: a process can rename itself).
    #[arg(long, value_name = "NAME", group = "subject", value_parser = form_value)]
    comm: Option<String>,
    /// TCP only: match connection attempts (SYN without ACK) only, so established connections
    /// carry on.
    #[arg(long)]
    new_only: bool,
}

impl BlockArgs {
    /// The request body (`key=value&...`, see the README's management API).
    fn form(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        let mut put = |k, v: Option<String>| {
            if let Some(v) = v {
                pairs.push((k, v));
            }
        };
        put("action", self.allow.then(|| "allow".to_string()));
        put("container", self.container.clone());
        put("direction", self.direction.clone());
        let (protocol, dst_port) = match (&self.tcp_dst_port, &self.udp_dst_port) {
            (Some(p), _) => (Some("tcp".to_string()), Some(p.clone())),
            (None, Some(p)) => (Some("udp".to_string()), Some(p.clone())),
            (None, None) => (self.protocol.clone(), self.dst_port.clone()),
        };
        put("protocol", protocol);
        put("remote", self.remote.clone());
        put("src_port", self.src_port.clone());
        put("dst_port", dst_port);
        put("uid", self.uid.map(|v| v.to_string()));
        put("pid", self.pid.map(|v| v.to_string()));
        put("exe", self.exe_inode.map(|v| v.to_string()));
        put("comm", self.comm.clone());
        put("new_only", self.new_only.then(|| "true".to_string()));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// A value that travels in a form body as it is: no separators, escapes or blanks.
fn form_value(text: &str) -> Result<String, String> {
    if !text.is_empty()
        && text
            .bytes()
            .all(|c| c.is_ascii_graphic() && !b"&=%+".contains(&c))
    {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` holds a blank, a control character or one of & = % +"
        ))
    }
}

/// A positive number of seconds (fractions allowed).
fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}

/// An HTTP method: one token.
fn method(text: &str) -> Result<String, String> {
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if !text.is_empty() && text.bytes().all(tchar) {
        Ok(text.to_string())
    } else {
        Err(format!("`{text}` is not an HTTP method"))
    }
}

/// A request target: `/` then visible ASCII.
fn target(text: &str) -> Result<String, String> {
    if text.starts_with('/') && text.bytes().all(|c| c.is_ascii_graphic()) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a path (it must start with / and hold no blanks or control characters)"
        ))
    }
}

/// A header value: printable ASCII.
fn header_value(text: &str) -> Result<String, String> {
    if text.bytes().all(|c| c == b' ' || c.is_ascii_graphic()) {
        Ok(text.trim().to_string())
    } else {
        Err(format!("`{text}` is not a header value"))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 1 (not clap's 2, which
            // here means "refused by Shoji").
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_LOCAL } else { EXIT_OK });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("shoji-admin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let addr = cli.addr.filter(|a| !a.is_empty()).ok_or_else(|| {
        Error::Usage("no address: give --addr HOST:PORT or set SHOJI_ADMIN_ADDR".to_string())
    })?;
    let key = match (&cli.cmd, cli.no_key, &cli.key_file) {
        // GET /nonce is never signed: it needs no key.
        (Cmd::Nonce, ..) | (_, true, _) => None,
        (_, false, Some(path)) => Some(load_key(path)?),
        (_, false, None) => return Err(Error::NoKey),
    };
    let mut client = Client::new(&addr, key, cli.timeout);
    match cli.cmd {
        Cmd::Nonce => {
            let (_, answer) = client.nonce()?;
            out(client.text(&answer)?.as_bytes())
        }
        Cmd::Metrics => {
            let answer = client.get("/metrics")?;
            out(client.text(&answer)?.as_bytes())
        }
        Cmd::Containers => {
            let answer = client.get("/containers")?;
            let text = client.text(&answer)?;
            client.check_json(text)?;
            out_line(text)
        }
        Cmd::Tasks { sockets } => {
            let answer = client.get(if sockets {
                "/tasks?sockets=1"
            } else {
                "/tasks"
            })?;
            let text = client.text(&answer)?;
            client.check_json_lines(text)?;
            out(text.as_bytes())
        }
        Cmd::Events {
            from,
            follow,
            interval,
        } => events(&mut client, from, follow, interval, cli.timeout),
        Cmd::Block(args) => {
            let form = args.form();
            if form.is_empty() {
                return Err(Error::Usage(
                    "name what to block (--container all blocks everything)".to_string(),
                ));
            }
            let answer = client
                .call(
                    "POST",
                    "/block",
                    Some("application/x-www-form-urlencoded"),
                    form.as_bytes(),
                )?
                .success("POST", "/block")?;
            let text = client.text(&answer)?;
            client.check_json(text)?;
            out_line(text)
        }
        Cmd::Blocks => {
            let answer = client.get("/blocks")?;
            let text = client.text(&answer)?;
            client.check_json(text)?;
            out_line(text)
        }
        Cmd::Unblock { id } => {
            let target = format!("/block/{id}");
            let answer = client
                .call("DELETE", &target, None, b"")?
                .success("DELETE", &target)?;
            let text = client.text(&answer)?;
            client.check_json(text)?;
            out_line(text)
        }
        Cmd::Request {
            method,
            path,
            body,
            content_type,
            save_request,
        } => {
            let body = body.unwrap_or_default();
            let result = client.call(&method, &path, content_type.as_deref(), body.as_bytes());
            if let (Some(file), Some(sent)) = (&save_request, client.last_sent()) {
                if let Err(e) = save(file, sent) {
                    if result.is_ok() {
                        return Err(e);
                    }
                    eprintln!("shoji-admin: {e}");
                }
            }
            let answer = result?;
            eprintln!("{}", answer.status_line());
            out(&answer.body)?;
            answer.success(&method, &path).map(drop)
        }
    }
}

/// Print events from `from` on; with `follow`, poll every `interval` until killed. While
/// following, an unreachable Shoji is reported and polled again, and a restart of Shoji (a new
/// boot id) starts again from event 0 of the new boot.
fn events(
    client: &mut Client,
    from: u64,
    follow: bool,
    interval: Duration,
    timeout: Duration,
) -> Result<(), Error> {
    let mut from = from;
    let mut boot = None;
    loop {
        // Following: a long poll (Shoji holds the request until an event arrives or the wait is
        // over), the wait well inside the request's time limit.
        let wait = if follow {
            (timeout.as_secs() / 2).min(20)
        } else {
            0
        };
        let target = if wait > 0 {
            format!("/events?from={from}&wait={wait}")
        } else {
            format!("/events?from={from}")
        };
        match client.get(&target) {
            Ok(answer) => {
                let next = client.next_event(&answer)?;
                let text = client.text(&answer)?;
                client.check_json_lines(text)?;
                let this_boot = answer.boot();
                if follow && boot.is_some() && this_boot.is_some() && this_boot != boot {
                    let mut h = [0u8; 32];
                    let id = this_boot.as_ref().map_or("", |b| hex(b, &mut h));
                    eprintln!("shoji-admin: Shoji restarted (boot {id}); following from event 0");
                    boot = this_boot;
                    from = 0;
                    continue;
                }
                boot = this_boot.or(boot);
                out_line(text)?;
                from = next;
            }
            Err(e @ Error::Unreachable { .. }) if follow => {
                eprintln!("shoji-admin: {e}; polling again");
            }
            Err(e) => return Err(e),
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Write `bytes` to stdout. A closed stdout (`| head`) ends the program quietly.
fn out(bytes: &[u8]) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => Err(Error::Output {
            what: "to stdout".to_string(),
            err,
        }),
    }
}

/// Write `text` to stdout, ending with a newline unless it is empty.
fn out_line(text: &str) -> Result<(), Error> {
    out(text.as_bytes())?;
    if text.is_empty() || text.ends_with('\n') {
        Ok(())
    } else {
        out(b"\n")
    }
}

/// Write the request sent to `file` (readable by its owner only: until Shoji has accepted it,
/// it is a request anybody could send in the administrator's name).
fn save(file: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(file)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|err| Error::Output {
            what: file.display().to_string(),
            err,
        })
}
