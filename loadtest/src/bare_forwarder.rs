//! bare-forwarder: the floor for any proxy on this machine.
//! Accept → connect upstream → copy bytes both ways, nothing else: no parsing, no pooling.
//! One monoio thread; io_uring with COOP_TASKRUN + SINGLE_ISSUER (and DEFER_TASKRUN where the
//! kernel has it) and sockets registered in its table of files, as tollgate's workers; legacy
//! (epoll) driver if the ring cannot be built.

use std::io::Write;
use std::net::SocketAddr;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

const BUF: usize = 16 * 1024;

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    ready_file: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut ready_file = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(val("--listen")?),
            "--upstream" => upstream = Some(val("--upstream")?),
            "--ready-file" => ready_file = Some(val("--ready-file")?),
            "-h" | "--help" => {
                println!(
                    "bare-forwarder --listen ADDR:PORT --upstream ADDR:PORT [--ready-file PATH]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let parse = |s: Option<String>, n: &str| -> Result<SocketAddr, String> {
        let s = s.ok_or_else(|| format!("{n} is required"))?;
        // Accept "http://host:port/..." as well as "host:port".
        let s = s.trim_start_matches("http://");
        let s = s.split('/').next().unwrap_or(s);
        s.parse().map_err(|e| format!("{n} {s}: {e}"))
    };
    Ok(Args {
        listen: parse(listen.or(Some("127.0.0.1:0".into())), "--listen")?,
        upstream: parse(upstream, "--upstream")?,
        ready_file,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare-forwarder: {e}");
            std::process::exit(2);
        }
    };
    // The same ring as tollgate's workers (src/runtime/driver.rs), so the floor is a fair one:
    // sockets registered in its table of files too (`runtime.fixed_files`).
    monoio::set_fixed_files(tollgate::runtime::driver::fixed_files_for_kernel(1024).0);
    let build = |defer: bool| {
        let mut urb = io_uring::IoUring::builder();
        urb.setup_coop_taskrun().setup_single_issuer();
        if defer {
            urb.setup_defer_taskrun();
        }
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(urb)
            .with_entries(4096)
            .enable_timer()
            .build()
    };
    let uring = build(true).or_else(|_| build(false));
    match uring {
        Ok(mut rt) => rt.block_on(serve(args, "io_uring")),
        Err(e) => {
            eprintln!("bare-forwarder: io_uring unavailable ({e}); using the legacy driver");
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("legacy driver");
            rt.block_on(serve(args, "legacy"))
        }
    }
}

async fn serve(args: Args, driver: &'static str) {
    let opts = ListenerOpts::default().reuse_addr(true).backlog(4096);
    let listener = match TcpListener::bind_with_config(args.listen, &opts) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare-forwarder: bind {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().expect("local addr");
    let ready = format!(
        "{{\"listen\":\"{local}\",\"pid\":{},\"driver\":\"{driver}\"}}\n",
        std::process::id()
    );
    match &args.ready_file {
        Some(p) => {
            // Write then rename, so a reader never sees half a file.
            let tmp = format!("{p}.tmp");
            let ok = std::fs::File::create(&tmp)
                .and_then(|mut f| f.write_all(ready.as_bytes()))
                .and_then(|_| std::fs::rename(&tmp, p));
            if let Err(e) = ok {
                eprintln!("bare-forwarder: ready file {p}: {e}");
                std::process::exit(1);
            }
        }
        None => print!("{ready}"),
    }
    let upstream = args.upstream;
    loop {
        let (down, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bare-forwarder: accept: {e}");
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        monoio::spawn(async move {
            let up = match TcpStream::connect_addr(upstream).await {
                Ok(s) => s,
                Err(_) => return,
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            down.register_fixed();
            up.register_fixed();
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            monoio::spawn(pump(ur, dw));
            pump(dr, uw).await;
        });
    }
}

/// Copy until EOF or error, then shut down the write side so the peer sees EOF too.
async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(mut r: R, mut w: W) {
    let mut buf = Vec::with_capacity(BUF);
    loop {
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
        buf.clear();
    }
    let _ = w.shutdown().await;
}
