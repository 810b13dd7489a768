//! The writer thread: takes records in the order workers sent them, writes them to the sinks
//! (the HTTP sink's thread gets a copy), and between messages flushes files and rotates them by
//! age. It waits parked (the hub unparks it after each message), at most `TICK`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::{Msg, Sinks, BATCH_BYTES};

/// The longest the writer sleeps without looking at its sinks (age rotation).
const TICK: Duration = Duration::from_millis(100);

pub(super) fn run(
    rx: Receiver<Msg>,
    mut sinks: Sinks,
    queued: Arc<AtomicUsize>,
    spare: Sender<Vec<u8>>,
    gauge: metrics::Gauge,
) {
    let write = |sinks: &mut Sinks, mut buf: Vec<u8>, n: usize| {
        sinks.write(&buf, n);
        queued.fetch_sub(n, Ordering::AcqRel);
        gauge.decrement(n as f64);
        buf.clear();
        // A batch's buffer passes BATCH_BYTES by one record and doubles once: kept up to that.
        if buf.capacity() <= 2 * BATCH_BYTES {
            let _ = spare.try_send(buf);
        }
    };
    // HTTP lanes of sinks a reload replaced, still sending what they hold.
    let mut retired: Vec<super::http::Retired> = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(Msg::Records(buf, n)) => write(&mut sinks, buf, n),
            Ok(Msg::Swap(new)) => {
                retired.retain(|r| !r.is_done());
                retired.extend(std::mem::replace(&mut sinks, *new).retire());
            }
            Ok(Msg::Close(ack)) => {
                // Everything sent before the close is in the channel already: write it all
                // (an HTTP collector gets one attempt per batch now, not its retries).
                sinks.closing();
                let mut acks = vec![ack];
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Records(buf, n) => write(&mut sinks, buf, n),
                        Msg::Swap(new) => {
                            sinks.finish();
                            sinks = *new;
                            sinks.closing();
                        }
                        Msg::Close(a) => acks.push(a),
                    }
                }
                sinks.finish();
                for r in retired {
                    r.finish();
                }
                for a in acks {
                    let _ = a.send(());
                }
                return;
            }
            // Nothing waiting: push what the files hold to the OS, then sleep until a worker
            // posts (an unpark before the park makes the park return at once) or the tick.
            Err(TryRecvError::Empty) => {
                sinks.idle();
                std::thread::park_timeout(TICK);
            }
            Err(TryRecvError::Disconnected) => {
                sinks.finish();
                for r in retired {
                    r.finish();
                }
                return;
            }
        }
    }
}
