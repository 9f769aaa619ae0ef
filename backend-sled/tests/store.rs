//! Opening, locking, closing and versioning of the database directory.

use keyloop_core::{Coordinator, Key};
use keyloop_sled::{FORMAT_VERSION, SledConfig, SledConfigError, SledError, SledStore};

#[test]
fn second_open_in_process_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = SledStore::open(&path).unwrap();
    let err = SledStore::open(&path).unwrap_err();
    let canonical = path.canonicalize().unwrap();
    match &err {
        SledError::AlreadyOpen { path } => assert_eq!(path, &canonical),
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
    assert!(err.to_string().contains(&canonical.display().to_string()));
    // Another spelling of the same directory is the same directory.
    let dotted = dir.path().join(".").join("db");
    assert!(matches!(
        SledStore::open(dotted),
        Err(SledError::AlreadyOpen { .. })
    ));
    assert_eq!(first.path(), Some(canonical.as_path()));
}

#[test]
fn closing_every_handle_allows_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = SledStore::open(&path).unwrap();
    let coordinator = store.coordinator();
    let clone = store.clone();
    drop(store);
    drop(clone);
    assert!(matches!(
        SledStore::open(&path),
        Err(SledError::AlreadyOpen { .. })
    ));
    drop(coordinator);
    SledStore::open(&path).unwrap();
}

#[test]
fn directory_locked_elsewhere_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(SledStore::open(&path).unwrap());
    // A raw sled handle takes the same file lock another process would.
    let raw = sled::open(&path).unwrap();
    let err = SledStore::open(&path).unwrap_err();
    match &err {
        SledError::Locked { path: p, .. } => assert_eq!(p, &path.canonicalize().unwrap()),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(err.to_string().contains("locked by another process"));
    drop(raw);
    SledStore::open(&path).unwrap();
}

#[test]
fn newer_format_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let raw = sled::open(&path).unwrap();
        raw.insert(b"keyloop.format", &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        raw.flush().unwrap();
    }
    let err = SledStore::open(&path).unwrap_err();
    match &err {
        SledError::IncompatibleVersion {
            found, supported, ..
        } => assert_eq!((*found, *supported), (FORMAT_VERSION + 1, FORMAT_VERSION)),
        other => panic!("expected IncompatibleVersion, got {other:?}"),
    }
    assert!(err.to_string().contains("format version"));
    let raw = sled::open(&path).unwrap();
    assert_eq!(
        raw.get(b"keyloop.format").unwrap().unwrap().as_ref(),
        (FORMAT_VERSION + 1).to_be_bytes()
    );
    assert_eq!(raw.tree_names().len(), 1, "no keyloop tree was created");
}

#[test]
fn foreign_sled_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let raw = sled::open(&path).unwrap();
        raw.insert(b"someone", b"else").unwrap();
        raw.flush().unwrap();
    }
    let err = SledStore::open(&path).unwrap_err();
    assert!(
        matches!(err, SledError::NotKeyloop { .. }),
        "expected NotKeyloop, got {err:?}"
    );
    assert!(err.to_string().contains("not a keyloop database"));
}

#[test]
fn a_file_where_the_directory_should_be_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"x").unwrap();
    let err = SledStore::open(&path).unwrap_err();
    assert!(matches!(err, SledError::Io { .. }), "got {err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn bad_config_is_reported_by_open() {
    assert!(matches!(
        SledStore::open(""),
        Err(SledError::Config(SledConfigError::EmptyPath))
    ));
}

#[tokio::test]
async fn temporary_store_works_and_has_no_path() {
    let store = SledStore::temporary().unwrap();
    assert_eq!(store.path(), None);
    let c = store.coordinator();
    c.trigger(&Key::new("k").unwrap()).await.unwrap();
    assert_eq!(c.inspect().await.unwrap().keys.len(), 1);
    // Two temporary stores are independent.
    let other = SledStore::temporary().unwrap();
    assert!(other.coordinator().inspect().await.unwrap().keys.is_empty());
}

#[tokio::test]
async fn batched_durability_flushes_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let config = SledConfig::builder()
        .path(&path)
        .durability(keyloop_sled::Durability::Batched {
            interval: std::time::Duration::from_secs(3600),
        })
        .build()
        .unwrap();
    {
        let store = SledStore::open_with(config).unwrap();
        store
            .coordinator()
            .trigger(&Key::new("k").unwrap())
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let store = SledStore::open(&path).unwrap();
    assert!(
        store
            .coordinator()
            .key_info(&Key::new("k").unwrap())
            .await
            .unwrap()
            .is_some()
    );
}

#[test]
fn damaged_record_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(SledStore::open(&path).unwrap());
    {
        let raw = sled::open(&path).unwrap();
        raw.open_tree("keyloop.registry")
            .unwrap()
            .insert(b"kvm/1", b"\x07garbage")
            .unwrap();
        raw.flush().unwrap();
    }
    let err = SledStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, SledError::Corrupt { detail, .. } if detail.contains("vm/1")),
        "got {err:?}"
    );
    assert!(err.to_string().contains("damaged record"));
}

#[tokio::test]
async fn closing_a_batched_store_flushes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let config = SledConfig::builder()
        .path(&path)
        .durability(keyloop_sled::Durability::Batched {
            interval: std::time::Duration::from_secs(3600),
        })
        .build()
        .unwrap();
    {
        let store = SledStore::open_with(config).unwrap();
        let c = store.coordinator();
        for i in 0..100 {
            c.trigger(&Key::new(format!("k{i}")).unwrap())
                .await
                .unwrap();
        }
    }
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.coordinator().inspect().await.unwrap().keys.len(), 100);
}

/// The smallest cache `build()` accepts opens and works (a cache of a few bytes, which
/// `build()` now refuses, panicked inside sled).
#[tokio::test]
async fn smallest_accepted_cache_works() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig::builder()
        .path(dir.path().join("db"))
        .cache_capacity_bytes(1 << 20)
        .build()
        .unwrap();
    let store = SledStore::open_with(config).unwrap();
    let c = store.coordinator();
    for i in 0..200 {
        c.trigger(&Key::new(format!("k/{i}")).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(c.inspect().await.unwrap().keys.len(), 200);
}

/// The kinds of damage that sled 0.34 opens without error (keys silently missing, or an
/// empty database) are refused with a typed error; nothing registered vanishes unnoticed.
mod damaged_files {
    use super::*;

    const KEYS: usize = 50;

    /// A closed database of `KEYS` registered keys; returns its directory and data file.
    async fn fifty_keys() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = SledStore::open(&path).unwrap();
            let c = store.coordinator();
            for i in 0..KEYS {
                c.trigger(&Key::new(format!("vm/{i}")).unwrap())
                    .await
                    .unwrap();
            }
            store.flush().await.unwrap();
        }
        let file = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .max_by_key(|p| p.metadata().unwrap().len())
            .expect("sled's data file");
        (dir, path, file)
    }

    fn truncate_to_half(file: &std::path::Path) {
        let len = file.metadata().unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }

    /// Opening must fail, or succeed with every key (sled may shrug off some damage).
    async fn never_opens_with_keys_missing(path: &std::path::Path, damage: &str) {
        match SledStore::open(path) {
            Err(e) => eprintln!("{damage}: refused: {e}"),
            Ok(store) => {
                let keys = store.coordinator().inspect().await.unwrap().keys.len();
                assert_eq!(
                    keys,
                    KEYS,
                    "{damage}: opened Ok with {} keys missing",
                    KEYS - keys
                );
            }
        }
    }

    #[tokio::test]
    async fn truncated_to_half() {
        let (_dir, path, file) = fifty_keys().await;
        truncate_to_half(&file);
        never_opens_with_keys_missing(&path, "truncated to half").await;
    }

    #[tokio::test]
    async fn random_bytes_in_the_middle() {
        use std::io::{Seek, SeekFrom, Write};
        let (_dir, path, file) = fifty_keys().await;
        let len = file.metadata().unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(len / 2 - 1024)).unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..2048)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        f.write_all(&noise).unwrap();
        drop(f);
        never_opens_with_keys_missing(&path, "2 KiB of noise").await;
    }

    #[tokio::test]
    async fn zeroed_header_is_refused_not_opened_empty() {
        use std::io::Write;
        let (_dir, path, file) = fifty_keys().await;
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let Err(err) = SledStore::open(&path) else {
            panic!("a wiped database must not open");
        };
        assert!(
            matches!(
                err,
                SledError::Damaged { .. } | SledError::Corrupt { .. } | SledError::Sled { .. }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn recovery_is_explicit_and_opens_what_is_left() {
        let (_dir, path, file) = fifty_keys().await;
        truncate_to_half(&file);
        assert!(
            matches!(SledStore::open(&path), Err(SledError::Damaged { .. })),
            "a plain open refuses the truncated database"
        );
        let config = SledConfig::builder()
            .path(&path)
            .recover_damaged(true)
            .build()
            .unwrap();
        let store = SledStore::open_with(config).expect("recovery opens what is left");
        let left = store.coordinator().inspect().await.unwrap().keys.len();
        assert!(left < KEYS, "{left} keys left after losing half the file");
        drop(store);
        // Recovery reset the tally and the witness: the next plain open succeeds.
        let store = SledStore::open(&path).expect("a recovered database opens");
        assert_eq!(
            store.coordinator().inspect().await.unwrap().keys.len(),
            left
        );
    }
}
