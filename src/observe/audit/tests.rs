use super::*;

fn file_settings(path: &std::path::Path, max_bytes: u64, keep: usize) -> Settings {
    Settings {
        enabled: true,
        file: Some(FileSink {
            path: path.display().to_string(),
            written: path.display().to_string(),
            max_bytes,
            rotate_every: Duration::from_secs(3600),
            keep,
        }),
        ..Settings::default()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every line of `path` and its rotated files, oldest first.
fn all_lines(path: &std::path::Path, keep: usize) -> Vec<String> {
    let mut files: Vec<std::path::PathBuf> = (1..=keep)
        .rev()
        .map(|i| std::path::PathBuf::from(format!("{}.{i}", path.display())))
        .collect();
    files.push(path.to_path_buf());
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn close_writes_every_record_and_rotation_keeps_them_all() {
    let dir = temp_dir("rotate");
    let path = dir.join("audit.jsonl");
    let settings = file_settings(&path, 2048, 100);
    let hub = Hub::new();
    hub.start(&settings).unwrap();
    let batch = Batch::default();
    for i in 0..500 {
        batch.push(&hub, &settings, |b| {
            b.extend_from_slice(format!("{{\"n\":{i}}}").as_bytes())
        });
    }
    batch.flush(&hub, &settings);
    hub.close();
    let lines = all_lines(&path, 100);
    let want: Vec<String> = (0..500).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(lines, want);
    // Rotated by size: several files, none over the limit.
    assert!(std::path::Path::new(&format!("{}.2", path.display())).exists());
    for i in 1..=100 {
        if let Ok(m) = std::fs::metadata(format!("{}.{i}", path.display())) {
            assert!(m.len() <= 2048, "{i}: {}", m.len());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rotation_deletes_files_beyond_keep() {
    let dir = temp_dir("keep");
    let path = dir.join("a.jsonl");
    let settings = file_settings(&path, 1024, 2);
    let hub = Hub::new();
    hub.start(&settings).unwrap();
    let batch = Batch::default();
    for i in 0..300 {
        batch.push(&hub, &settings, |b| {
            b.extend_from_slice(format!("{{\"n\":{i}}}").as_bytes())
        });
    }
    batch.flush(&hub, &settings);
    hub.close();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]);
    // The newest records are all there, in order.
    let lines = all_lines(&path, 2);
    assert_eq!(lines.last().unwrap(), "{\"n\":299}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_buffer_drops_with_the_drop_policy() {
    // No writer started: nothing drains, so the second batch finds the buffer full.
    let hub = Hub::new();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let _ = hub.tx.set(tx);
    let settings = Settings {
        enabled: true,
        buffer: 3,
        overflow: Overflow::Drop,
        stdout: true,
        ..Settings::default()
    };
    let batch = Batch::default();
    for _ in 0..3 {
        batch.push(&hub, &settings, |b| b.extend_from_slice(b"{}"));
    }
    batch.flush(&hub, &settings);
    assert_eq!(hub.queued.load(Ordering::Acquire), 3);
    batch.push(&hub, &settings, |b| b.extend_from_slice(b"{}"));
    batch.flush(&hub, &settings);
    assert_eq!(
        hub.queued.load(Ordering::Acquire),
        3,
        "the fourth was dropped"
    );
    assert!(batch.is_empty());
}

#[test]
fn session_hashes_are_keyed_per_process() {
    let (a, b) = (Hub::new(), Hub::new());
    let id = [7u8; 16];
    let (mut x, mut y, mut z) = ([0u8; 16], [0u8; 16], [0u8; 16]);
    a.session_hash(&id, &mut x);
    a.session_hash(&id, &mut y);
    b.session_hash(&id, &mut z);
    assert_eq!(x, y, "stable within a process");
    assert_ne!(x, z, "another key, another hash");
    assert!(x.iter().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn a_worker_cache_gives_the_hub_hash_and_tells_colliding_sessions_apart() {
    let (hub, batch) = (Hub::new(), Batch::default());
    // Same cache set (first, eighth and last bytes alike), different sessions: three, so one
    // is evicted and computed again.
    let a = [1u8; 16];
    let mut b = [1u8; 16];
    b[3] = 9;
    let mut c = [1u8; 16];
    c[4] = 5;
    let hash = |id: &[u8; 16]| {
        let mut o = [0u8; 16];
        hub.session_hash(id, &mut o);
        o
    };
    for id in [a, b, a, a, b, c, a, c, b, b, a] {
        let mut got = [0u8; 16];
        batch.session_hash(&hub, &id, &mut got);
        assert_eq!(got, hash(&id), "cached hash of {id:?}");
    }
    assert_ne!(hash(&a), hash(&b));
    assert_ne!(hash(&b), hash(&c));
}

#[test]
fn age_rotation_falls_on_wall_clock_boundaries() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    let hour = Duration::from_secs(3600);
    // 10:17:05 → 11:00:00; exactly on the hour → the next hour.
    assert_eq!(
        sink::next_boundary(at(10 * 3600 + 1025), hour),
        at(11 * 3600)
    );
    assert_eq!(sink::next_boundary(at(11 * 3600), hour), at(12 * 3600));
    // 24h: midnight UTC.
    let day = Duration::from_secs(86_400);
    assert_eq!(sink::next_boundary(at(3 * 86_400 + 5), day), at(4 * 86_400));
    // Sub-second periods, and a clock before the epoch.
    let ms = Duration::from_millis(250);
    assert_eq!(
        sink::next_boundary(UNIX_EPOCH + Duration::from_millis(1_100), ms),
        UNIX_EPOCH + Duration::from_millis(1_250)
    );
    assert_eq!(
        sink::next_boundary(SystemTime::UNIX_EPOCH - hour, hour),
        at(3600)
    );
}
