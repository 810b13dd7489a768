//! Building one monoio runtime per thread: io_uring with a tuned ring, or the legacy epoll driver.
//! The tuned ring (cooperative task running, single issuer) costs markedly less CPU per request
//! than monoio's default. With deferred task running on top, completions are run only when the
//! worker waits on its ring, never at the exit of another syscall (the pool's readiness `poll`
//! was interrupted and restarted by them): ~2% less CPU per request, none for the bare
//! forwarder (loadtest/README.md, issue 10). Where a flag is refused (older kernel) the ring
//! is built without it; where no ring can be built (old kernel, seccomp) we fall back to epoll.

use std::future::Future;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::Driver;

/// Which driver a runtime ended up on; logged per worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Legacy,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Legacy => "legacy(epoll)",
        }
    }
}

/// Builds a runtime per `want` on the current thread and runs `make()` to completion on it.
/// `on_driver` learns which driver was chosen (and why io_uring was not) before the future starts.
/// An io_uring ring gets a table of `fixed_files` registered-file slots, a count
/// `fixed_files_for_kernel` has already bounded (none if the kernel refuses it:
/// `monoio::fixed_files_registered` tells).
pub fn block_on<F, Fut>(
    want: Driver,
    entries: u32,
    fixed_files: u32,
    on_driver: impl FnOnce(DriverKind, Option<String>),
    make: F,
) -> Fut::Output
where
    F: FnOnce(DriverKind) -> Fut,
    Fut: Future,
{
    let mut uring_error = None;
    if want != Driver::Legacy {
        monoio::set_fixed_files(fixed_files);
        // Deferred task running first (Linux 6.1+), then without it (5.19+); the ring is built
        // on the thread that will be its only issuer.
        for defer in [true, false] {
            let mut urb = io_uring::IoUring::builder();
            urb.setup_coop_taskrun().setup_single_issuer();
            if defer {
                urb.setup_defer_taskrun();
            }
            match RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(entries)
                .uring_builder(urb)
                .enable_timer()
                .build()
            {
                Ok(mut rt) => {
                    on_driver(DriverKind::IoUring, None);
                    return rt.block_on(make(DriverKind::IoUring));
                }
                Err(e) => uring_error = Some(e.to_string()),
            }
        }
    }
    // `want == IoUring` still falls back, but the caller is told why so it can log loudly.
    let mut rt: monoio::Runtime<TimeDriver<LegacyDriver>> = RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("the legacy epoll driver always builds");
    on_driver(DriverKind::Legacy, uring_error);
    rt.block_on(make(DriverKind::Legacy))
}

/// How many registered-file slots a worker ring gets for `runtime.fixed_files` = `requested`,
/// and why it is fewer when it is: none on a kernel before 6.13, at most the open-file limit.
///
/// Before 6.13 a file taken out of the table was released only once every operation submitted
/// before its removal had completed (removed files waited in one ordered list): one receive left
/// pending on an idle keep-alive connection would keep every socket closed after it open, its
/// memory and unsent data with it. From 6.13 each registered file has its own reference count.
pub fn fixed_files_for_kernel(requested: u32) -> (u32, Option<String>) {
    if requested == 0 {
        return (0, None);
    }
    match kernel_release() {
        Some((major, minor)) if (major, minor) >= (6, 13) => {}
        found => {
            let version = found.map_or("unknown".to_string(), |(a, b)| format!("{a}.{b}"));
            return (
                0,
                Some(format!(
                    "off: the kernel ({version}) is older than 6.13, which releases a socket \
                     taken out of the table only once earlier operations complete"
                )),
            );
        }
    }
    let limit = nofile_limit();
    if requested > limit {
        return (
            limit,
            Some(format!(
                "{limit} slots, not {requested}: the open-file limit (RLIMIT_NOFILE) bounds them"
            )),
        );
    }
    (requested, None)
}

/// The running kernel's (major, minor) version, from `uname`.
fn kernel_release() -> Option<(u32, u32)> {
    // SAFETY: uname fills a zeroed struct on the stack; release is NUL-terminated.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return None;
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    parse_release(&release)
}

/// "6.18.44-fc-v657" → (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let number = |s: &str| {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let mut parts = release.split('.');
    Some((number(parts.next()?)?, number(parts.next()?)?))
}

/// The soft open-file limit: the kernel refuses a larger table of registered files.
fn nofile_limit() -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a stack struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    u32::try_from(lim.rlim_cur).unwrap_or(u32::MAX)
}

/// Pins the calling thread to `core` (modulo the cores this process may use).
pub fn pin_to_core(index: usize) -> Option<usize> {
    // SAFETY: plain libc calls on a zeroed cpu_set_t owned by this frame.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return None;
        }
        let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &allowed))
            .collect();
        if cores.is_empty() {
            return None;
        }
        let core = cores[index % cores.len()];
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return None;
        }
        Some(core)
    }
}

/// Runs `n` threads named `{name}-{i}`, each with its own runtime running `make(i)`; returns their handles.
pub fn spawn_runtimes<F, Fut>(
    name: &str,
    n: usize,
    want: Driver,
    entries: u32,
    fixed_files: u32,
    pin: bool,
    make: F,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>>
where
    F: Fn(usize, DriverKind) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()>,
{
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let make = make.clone();
        let tname = format!("{name}-{i}");
        let h = std::thread::Builder::new().name(tname.clone()).spawn(move || {
            let core = if pin { pin_to_core(i) } else { None };
            // A plain value in text and JSON logs alike ("3" or "unpinned"), not `Some(3)`.
            let core = core.map_or_else(|| "unpinned".to_string(), |c| c.to_string());
            block_on(
                want,
                entries,
                fixed_files,
                |k, why| {
                    match (k, why) {
                        (DriverKind::IoUring, _) => tracing::info!(thread = %tname, core = %core, driver = k.as_str(), "runtime started"),
                        (_, Some(why)) => tracing::warn!(thread = %tname, core = %core, driver = k.as_str(), error = %why, "io_uring unavailable, using epoll"),
                        (_, None) => tracing::info!(thread = %tname, core = %core, driver = k.as_str(), "runtime started"),
                    }
                },
                |kind| make(i, kind),
            )
        })?;
        handles.push(h);
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(parse_release("6.13"), Some((6, 13)));
        assert_eq!(parse_release("5.19.0+"), Some((5, 19)));
        assert_eq!(parse_release("6.12rc7"), Some((6, 12)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn no_table_unless_asked_for() {
        assert_eq!(fixed_files_for_kernel(0), (0, None));
    }
}
