//! tollgate: arguments → load config → start workers → wait for a signal.
//! A bad config exits non-zero with every problem listed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "A thread-per-core MCP gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file [default: config/tollgate.yaml in the current directory if it exists,
        /// else the built-in defaults]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write {"listen","admin","pid"} as JSON here once every worker accepts.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file and print the effective configuration (secrets redacted).
    Check {
        /// Config file [default: config/tollgate.yaml in the current directory if it exists,
        /// else the built-in defaults, as for `run`]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also contact every upstream (initialize, list tools, prompts, resources, templates)
        /// and report name collisions, rewritten names, filter globs that match nothing and
        /// unreachable upstreams (report on stdout as YAML comments; exit 1 on any).
        #[arg(long)]
        probe: bool,
    },
    /// Print the SHA-256 (hex) of an API key read from stdin (one trailing newline ignored),
    /// for `auth.api_keys[].sha256`.
    HashKey,
    /// Print an HS256 JWT signed with the secret in an environment variable (development aid).
    MintToken {
        /// The environment variable holding the secret (the issuer's `secret`).
        #[arg(long)]
        secret_env: String,
        /// `iss`: the issuer's `issuer`.
        #[arg(long)]
        iss: String,
        /// `aud`: the endpoint's resource URI, e.g. http://127.0.0.1:8080/mcp
        #[arg(long)]
        aud: String,
        #[arg(long)]
        sub: String,
        /// Roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime: a number with s, m, h or d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Run the built-in demo MCP server on its own (tests, load tests, trying things out).
    DemoUpstream {
        #[arg(long, default_value = "127.0.0.1:3001")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Answer every request as an SSE stream.
        #[arg(long)]
        sse: bool,
        /// Pad tools/list with this many synthetic tools.
        #[arg(long, default_value_t = 0)]
        tools: usize,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

/// `--ttl`: `90s`, `15m`, `1h`, `7d`.
fn ttl_seconds(s: &str) -> Option<u64> {
    let unit = match s.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: u64 = s[..s.len() - 1].parse().ok()?;
    n.checked_mul(unit).filter(|&t| t > 0)
}

const DEFAULT_CONFIG: &str = "config/tollgate.yaml";

fn init_logs(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads `--config`, else `DEFAULT_CONFIG` if it exists, else the built-in defaults (`run` and
/// `check` alike). Also returns where the config came from, to be said at start.
/// The third value is the file (`None`: built-in defaults), which a reload re-reads.
type Loaded = (tollgate::config::Config, String, Option<PathBuf>);

fn load(path: Option<PathBuf>) -> Result<Loaded, ExitCode> {
    let default = std::path::Path::new(DEFAULT_CONFIG);
    let result = match path {
        Some(p) => tollgate::config::load_file(&p)
            .map(|c| (c, p.display().to_string(), Some(p.clone())))
            .map_err(|e| (p.display().to_string(), e)),
        None if default.exists() => tollgate::config::load_file(default)
            .map(|c| (c, DEFAULT_CONFIG.to_string(), Some(default.to_path_buf())))
            .map_err(|e| (DEFAULT_CONFIG.to_string(), e)),
        None => {
            let cwd = std::env::current_dir()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            tollgate::config::load_str("{}")
                .map(|c| {
                    let source =
                        format!("built-in defaults (no --config, and no {DEFAULT_CONFIG}{cwd})");
                    (c, source, None)
                })
                .map_err(|e| ("<defaults>".to_string(), e))
        }
    };
    result.map_err(|(p, errs)| {
        eprintln!("tollgate: {p}: {} problem(s):", errs.0.len());
        for e in &errs.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(2)
    })
}

/// `check --probe`: the upstreams' answers, reported after the effective config as YAML
/// comments (stdout stays loadable). 1 when the report holds a problem or the probe could not run.
fn check_probe(c: tollgate::config::Config) -> ExitCode {
    init_logs("error", false);
    match tollgate::proxy::probe::probe(c) {
        Ok(out) => {
            println!("# tollgate check --probe");
            for line in out.report.lines() {
                println!("# {line}");
            }
            if out.problems == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tollgate: probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, ready_file } => {
            let (config, source, config_path) = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logs(&config.log.level, config.log.json);
            tracing::info!("config: {source}");
            match tollgate::runtime::run(
                config,
                tollgate::runtime::RunOptions {
                    ready_file,
                    config_path,
                },
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, probe } => match load(config) {
            Ok((c, source, _)) => {
                // stdout is the effective config (loadable YAML); where it came from goes to stderr.
                eprintln!("tollgate: config: {source}");
                print!("{}", tollgate::config::render_effective(&c));
                if probe {
                    return check_probe(c);
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::HashKey => {
            let mut key = Vec::new();
            if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut key) {
                eprintln!("tollgate: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
            let key = key.strip_suffix(b"\n").unwrap_or(&key);
            let key = key.strip_suffix(b"\r").unwrap_or(key);
            if key.is_empty() {
                eprintln!("tollgate: no key on stdin");
                return ExitCode::FAILURE;
            }
            println!("{}", tollgate::policy::authn::hash_key(key));
            ExitCode::SUCCESS
        }
        Command::MintToken {
            secret_env,
            iss,
            aud,
            sub,
            roles,
            ttl,
        } => {
            let Some(secret) = std::env::var_os(&secret_env) else {
                eprintln!("tollgate: environment variable {secret_env} is not set");
                return ExitCode::FAILURE;
            };
            let Some(ttl_secs) = ttl_seconds(&ttl) else {
                eprintln!("tollgate: --ttl {ttl:?}: expected a number with s, m, h or d, e.g. 1h");
                return ExitCode::FAILURE;
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let secret = std::os::unix::ffi::OsStrExt::as_bytes(secret.as_os_str()).to_vec();
            match tollgate::policy::authn::mint_hs256(
                &secret, &iss, &aud, &sub, &roles, ttl_secs, now,
            ) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DemoUpstream {
            listen,
            workers,
            sse,
            tools,
            ready_file,
        } => {
            init_logs("info", false);
            tollgate::runtime::raise_nofile_limit();
            let opts = tollgate::demo::DemoOptions {
                workers: workers.max(1),
                sse,
                extra_tools: tools,
            };
            match tollgate::demo::spawn(listen, opts) {
                Ok(addr) => {
                    eprintln!("tollgate demo upstream: http://{addr}/mcp");
                    if let Some(p) = ready_file {
                        if let Err(e) = tollgate::runtime::write_ready_file(&p, addr, None) {
                            eprintln!("tollgate: {e:#}");
                            return ExitCode::FAILURE;
                        }
                    }
                    let mut signals = match signal_hook::iterator::Signals::new([
                        signal_hook::consts::SIGTERM,
                        signal_hook::consts::SIGINT,
                    ]) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("tollgate: signals: {e}");
                            return ExitCode::FAILURE;
                        }
                    };
                    let _ = signals.forever().next();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate: demo upstream on {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
