//! `serve` reloads the config directory from the paths its watcher reports
//! ([`ConfigDir::reload_events`]) instead of listing the whole tree. This checks, on random
//! sequences of file operations, that after every step such a reload leaves exactly the objects
//! and errors a full listing ([`ConfigDir::reload`]) gives, with the paths fed directly (those a
//! watcher reports for each operation) and from a real `notify` watcher; and that the events
//! were used at all (not every reload fell back to the listing).

use backendtls_loader::source::{ConfigDir, FileEvents, Reload, SourceError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const STEPS: usize = 120;

/// What a reload left: the store (every object, by kind and key), the errors and the files not
/// in use.
fn state(config: &mut ConfigDir) -> (String, Vec<SourceError>, Vec<String>) {
    let unusable = config.unusable().iter().map(|p| p.display().to_string()).collect();
    let (store, errors) = config.objects();
    (format!("{store:#?}"), errors, unusable)
}

/// A file of one to three objects; names come from small pools, so that objects move between
/// files and are defined twice.
fn content(rng: &mut Rng) -> String {
    let mut documents = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let (ns, name, value) = (rng.below(2), rng.below(6), rng.below(1000));
        documents.push(match rng.below(3) {
            0 => format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: p{name}, namespace: ns{ns}}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: s{value}}}]\n  validation: {{hostname: h{value}.example, wellKnownCACertificates: System}}\n"
            ),
            1 => format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{name}, namespace: ns{ns}}}\nspec: {{ports: [{{name: https, port: {}}}]}}\n",
                1 + value
            ),
            _ => format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{name}, namespace: ns{ns}}}\ndata: {{ca.crt: v{value}}}\n"
            ),
        });
    }
    documents.join("---\n")
}

/// Input files and visible directories under `dir` (the root excluded), in path order.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            dirs.push(path.clone());
            walk(&path, files, dirs);
        } else if name.ends_with(".yaml") {
            files.push(path);
        }
    }
}

/// One random file operation under `root`; returns the paths a watcher reports for it and what
/// it was.
fn operate(root: &Path, rng: &mut Rng, step: usize) -> (Vec<PathBuf>, &'static str) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(root, &mut files, &mut dirs);
    dirs.push(root.to_path_buf());
    let some_dir = |rng: &mut Rng| rng.pick(&dirs).clone();
    let new_file = |rng: &mut Rng| some_dir(rng).join(format!("f{step}.yaml"));
    let write = |path: &Path, text: &str| std::fs::write(path, text).unwrap();
    match rng.below(13) {
        // Write: a new file, or new content in one.
        0..=2 => {
            let path = if files.is_empty() || rng.chance(40) {
                new_file(rng)
            } else {
                rng.pick(&files).clone()
            };
            write(&path, &content(rng));
            (vec![path], "write")
        }
        3 if !files.is_empty() => {
            let path = rng.pick(&files).clone();
            let text = std::fs::read(&path).unwrap();
            std::fs::write(&path, text).unwrap();
            (vec![path], "rewrite the same content")
        }
        4 if !files.is_empty() => {
            let path = rng.pick(&files).clone();
            std::fs::remove_file(&path).unwrap();
            (vec![path], "delete")
        }
        5 => {
            let dir = some_dir(rng).join(format!("d{step}"));
            std::fs::create_dir(&dir).unwrap();
            let path = dir.join("in-new-dir.yaml");
            write(&path, &content(rng));
            (vec![dir, path], "create in a new directory")
        }
        6 if !files.is_empty() => {
            let from = rng.pick(&files).clone();
            // To a new name, or over another file.
            let to = if rng.chance(30) { rng.pick(&files).clone() } else { new_file(rng) };
            std::fs::rename(&from, &to).unwrap();
            (vec![from, to], "rename a file")
        }
        7 if dirs.len() > 1 => {
            let from = dirs[rng.below(dirs.len() - 1)].clone();
            // Out of the way of its own subtree, sometimes to a hidden name.
            let name = if rng.chance(30) { format!(".r{step}") } else { format!("r{step}") };
            let to = root.join(name);
            std::fs::rename(&from, &to).unwrap();
            (vec![from, to], "rename a directory")
        }
        8 => {
            let path = some_dir(rng).join(format!(".hidden{}.yaml", rng.below(3)));
            write(&path, &content(rng));
            (vec![path], "hidden file")
        }
        9 => {
            let path = some_dir(rng).join(format!("notes{}.txt", rng.below(3)));
            write(&path, &content(rng));
            (vec![path], "not a YAML file")
        }
        10 if !files.is_empty() => {
            let path = rng.pick(&files).clone();
            write(&path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [broken\n");
            (vec![path], "broken YAML")
        }
        11 if !files.is_empty() => {
            // An editor's save: the new content written aside, then renamed over the file.
            let path = rng.pick(&files).clone();
            let aside = path.with_file_name(format!(".{step}.swp"));
            write(&aside, &content(rng));
            std::fs::rename(&aside, &path).unwrap();
            (vec![aside, path], "save by rename")
        }
        12 if dirs.len() > 1 => {
            // A directory replaced by a file of the same name: one path for both.
            let path = dirs[rng.below(dirs.len() - 1)].clone();
            std::fs::remove_dir_all(&path).unwrap();
            write(&path, &content(rng));
            (vec![path], "replace a directory by a file")
        }
        _ => {
            let path = new_file(rng);
            write(&path, &content(rng));
            (vec![path], "write")
        }
    }
}

fn events(paths: impl IntoIterator<Item = PathBuf>) -> FileEvents {
    let mut events = FileEvents::default();
    paths.into_iter().for_each(|path| events.add_path(path));
    events
}

/// After every step, a reload from the step's paths leaves what a full listing does.
#[test]
fn reloads_from_event_paths_equal_full_listings() {
    for seed in 1..=6u64 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let (mut by_events, mut listed) = (ConfigDir::new(root), ConfigDir::new(root));
        let first = by_events.reload_events(FileEvents::default()).unwrap();
        assert_eq!(first, Reload::Listed { reason: "first load".into() });
        listed.reload().unwrap();
        let mut checked = 0;
        for step in 0..STEPS {
            let (paths, what) = operate(root, &mut rng, step);
            let reload = by_events.reload_events(events(paths.clone())).unwrap();
            listed.reload().unwrap();
            let context = format!("seed {seed} step {step}: {what} {paths:?} ({reload:?})");
            assert_eq!(state(&mut by_events), state(&mut listed), "{context}");
            match (&reload, what) {
                (
                    Reload::Checked { .. },
                    "rename a directory"
                    | "create in a new directory"
                    | "replace a directory by a file",
                ) => {
                    panic!("{context}: a directory's event must list the tree")
                }
                (Reload::Checked { .. }, _) => checked += 1,
                (
                    Reload::Listed { .. },
                    "rename a directory"
                    | "create in a new directory"
                    | "replace a directory by a file",
                ) => {}
                (Reload::Listed { reason }, _) => panic!("{context}: listed ({reason})"),
            }
        }
        assert!(checked > STEPS / 2, "seed {seed}: only {checked} reloads used the events");
    }
}

/// The same, with the paths a real `notify` watcher reports (the watcher `serve` runs). Each step
/// ends by writing a hidden marker file; inotify keeps the order of events, so once the marker's
/// event arrives, every event of the step has.
#[test]
fn reloads_from_a_real_watcher_equal_full_listings() {
    use notify::Watcher;
    for seed in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .unwrap();
        watcher.watch(root, notify::RecursiveMode::Recursive).unwrap();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ seed);
        let (mut by_events, mut listed) = (ConfigDir::new(root), ConfigDir::new(root));
        by_events.reload_events(FileEvents::default()).unwrap();
        listed.reload().unwrap();
        let mut checked = 0;
        for step in 0..STEPS {
            let (_, what) = operate(root, &mut rng, step);
            let marker = root.join(format!(".step{step}"));
            std::fs::write(&marker, "").unwrap();
            let mut seen = FileEvents::default();
            loop {
                let event = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
                let is_marker = event.as_ref().is_ok_and(|e| e.paths.contains(&marker));
                seen.merge(FileEvents::from_notify(event).unwrap_or_default());
                if is_marker {
                    break;
                }
            }
            let reload = by_events.reload_events(seen).unwrap();
            listed.reload().unwrap();
            let context = format!("seed {seed} step {step}: {what} ({reload:?})");
            assert_eq!(state(&mut by_events), state(&mut listed), "{context}");
            checked += matches!(reload, Reload::Checked { .. }) as usize;
        }
        assert!(checked > STEPS / 2, "seed {seed}: only {checked} reloads used the events");
    }
}

/// Where events cannot name every change, the tree is listed: a Kubernetes ConfigMap volume
/// (files are symlinks through `..data`, swapped atomically, with events on hidden paths only),
/// hard links, paths outside the directory, lost events.
#[test]
fn untrustworthy_events_list_the_tree() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cm = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca}}\ndata: {{ca.crt: {value}}}\n"
        )
    };
    let volume = |n: usize, value: &str| {
        let data = root.join(format!("..2026_{n}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("ca.yaml"), cm(value)).unwrap();
        data
    };
    volume(1, "one");
    symlink("..2026_1", root.join("..data")).unwrap();
    symlink("..data/ca.yaml", root.join("ca.yaml")).unwrap();
    let mut config = ConfigDir::new(root);
    config.reload().unwrap();
    let value = |config: &mut ConfigDir| {
        let key = backendtls_loader::objects::ObjectKey::new("default", "ca");
        config.objects().0.config_maps[&key].data["ca.crt"].to_string()
    };
    assert_eq!(value(&mut config), "one");
    // The kubelet's update: a new data directory, `..data` swapped to it, the old one removed.
    let old = root.join("..2026_1");
    let new = volume(2, "two");
    symlink("..2026_2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(&old).unwrap();
    let hidden =
        [new.clone(), new.join("ca.yaml"), root.join("..data_tmp"), root.join("..data"), old];
    let reload = config.reload_events(events(hidden)).unwrap();
    assert!(
        matches!(&reload, Reload::Listed { reason } if reason.contains("symlinks")),
        "{reload:?}"
    );
    assert_eq!(value(&mut config), "two");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.yaml"), cm("a")).unwrap();
    let mut config = ConfigDir::new(root);
    config.reload().unwrap();
    let listed = |config: &mut ConfigDir, paths: Vec<PathBuf>, why: &str| {
        let reload = config.reload_events(events(paths)).unwrap();
        assert!(matches!(&reload, Reload::Listed { reason } if reason.contains(why)), "{reload:?}");
    };
    let reload = config.reload_events(events([root.join("a.yaml")])).unwrap();
    assert_eq!(reload, Reload::Checked { paths: 1 });
    // A directory replaced by a file of the same name (one event names both).
    std::fs::create_dir(root.join("d.yaml")).unwrap();
    std::fs::write(root.join("d.yaml/in.yaml"), cm("in")).unwrap();
    config.reload().unwrap();
    std::fs::remove_dir_all(root.join("d.yaml")).unwrap();
    std::fs::write(root.join("d.yaml"), "").unwrap();
    listed(&mut config, vec![root.join("d.yaml")], "directory listed before");
    assert!(config.errors().is_empty() && config.objects().1.is_empty());
    let key = backendtls_loader::objects::ObjectKey::new("default", "ca");
    assert_eq!(&config.objects().0.config_maps[&key].data["ca.crt"], "a");
    listed(&mut config, vec![PathBuf::from("/elsewhere/a.yaml")], "outside");
    listed(&mut config, vec![root.to_path_buf()], "directory itself");
    listed(&mut config, vec![root.join("a.yaml"), root.join("..").join("x.yaml")], "outside");
    // A second name for a file, even a hidden one, through which it can change unseen.
    std::fs::hard_link(root.join("a.yaml"), root.join(".other")).unwrap();
    listed(&mut config, vec![root.join(".other")], "hard-linked");
    // ...and while it exists, every reload lists the tree.
    listed(&mut config, vec![root.join("b.yaml")], "hard links");
    std::fs::remove_file(root.join(".other")).unwrap();
    listed(&mut config, vec![root.join(".other")], "hard links");
    assert_eq!(config.reload_events(events([])).unwrap(), Reload::Checked { paths: 0 });
    let mut lost = FileEvents::default();
    lost.merge(FileEvents::everything("the watcher lost events (rescan)"));
    lost.add_path(root.join("a.yaml"));
    listed_with(&mut config, lost, "rescan");
    let overflow =
        notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan);
    listed_with(&mut config, FileEvents::from_notify(Ok(overflow)).unwrap(), "rescan");
    assert_eq!(config.reload_events(events([])).unwrap(), Reload::Checked { paths: 0 });
    // A watcher that failed (it could not watch a new directory) may miss changes from then on.
    let error = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
    listed_with(&mut config, FileEvents::from_notify(Err(error)).unwrap(), "watch limit");
    listed_with(&mut config, events([]), "the watcher failed");
    let read = notify::Event::new(notify::EventKind::Access(notify::event::AccessKind::Any));
    assert!(FileEvents::from_notify(Ok(read.add_path(root.join("a.yaml")))).is_none());
}

fn listed_with(config: &mut ConfigDir, events: FileEvents, why: &str) {
    let reload = config.reload_events(events).unwrap();
    assert!(matches!(&reload, Reload::Listed { reason } if reason.contains(why)), "{reload:?}");
}

/// Reading only what events name, a reload's work does not grow with the files in the tree:
/// counted as paths checked, not timed.
#[test]
fn a_reload_checks_only_the_paths_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..500 {
        let sub = root.join(format!("ns{}", i % 10));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join(format!("c{i}.yaml")),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{v: a}}\n"),
        )
        .unwrap();
    }
    let mut config = ConfigDir::new(root);
    config.reload().unwrap();
    let path = root.join("ns3/c3.yaml");
    std::fs::write(&path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c3}\ndata: {v: b}\n")
        .unwrap();
    assert_eq!(config.reload_events(events([path])).unwrap(), Reload::Checked { paths: 1 });
    let key = backendtls_loader::objects::ObjectKey::new("default", "c3");
    assert_eq!(&config.objects().0.config_maps[&key].data["v"], "b");
}

/// An object that moves from one file to another in one reload (a file renamed to a name later
/// in path order, or the object cut from one file and pasted into another) is looked up only in
/// its new file. (Updating the store file by file, the file it left was still taken for its
/// first definition: the reload panicked and `serve`'s rebuild thread with it.)
#[test]
fn an_object_moving_between_files_in_one_reload() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cm = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: x}}\n")
    };
    std::fs::write(root.join("a.yaml"), cm("moving")).unwrap();
    std::fs::write(root.join("b.yaml"), cm("staying")).unwrap();
    let (mut listed, mut by_events) = (ConfigDir::new(root), ConfigDir::new(root));
    listed.reload().unwrap();
    by_events.reload().unwrap();
    let names = |config: &mut ConfigDir| -> Vec<String> {
        config.objects().0.config_maps.keys().map(|k| k.name.clone()).collect()
    };
    std::fs::rename(root.join("a.yaml"), root.join("c.yaml")).unwrap();
    listed.reload().unwrap();
    by_events.reload_events(events([root.join("a.yaml"), root.join("c.yaml")])).unwrap();
    // Cut from b and pasted into a.
    std::fs::write(root.join("a.yaml"), cm("staying")).unwrap();
    std::fs::write(root.join("b.yaml"), "").unwrap();
    listed.reload().unwrap();
    by_events.reload_events(events([root.join("b.yaml"), root.join("a.yaml")])).unwrap();
    for config in [&mut listed, &mut by_events] {
        assert_eq!(names(config), ["moving", "staying"]);
        assert!(config.objects().1.is_empty());
    }
}

/// `serve`'s reloads ([`ConfigDir::reload_pending`]): without a watcher, every one lists the
/// tree; with one, only what its events name is checked, and after a reload that failed (the
/// directory was gone) the next one lists the tree again.
#[test]
fn pending_events_and_failed_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("config");
    std::fs::create_dir(&root).unwrap();
    let cm = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n");
    let has = |config: &mut ConfigDir, name: &str| {
        let key = backendtls_loader::objects::ObjectKey::new("default", name);
        config.objects().0.config_maps.contains_key(&key)
    };
    let mut unwatched = ConfigDir::new(&root);
    unwatched.reload_pending().unwrap();
    std::fs::write(root.join("a.yaml"), cm("a")).unwrap();
    unwatched.reload_pending().unwrap();
    assert!(has(&mut unwatched, "a"));

    let mut watched = ConfigDir::new(&root);
    watched.watch_events();
    watched.reload_pending().unwrap();
    assert!(has(&mut watched, "a"));
    // Unreported changes stay unseen (the watcher reports every one)...
    std::fs::write(root.join("b.yaml"), cm("b")).unwrap();
    watched.reload_pending().unwrap();
    assert!(!has(&mut watched, "b"));
    watched.add_events(events([root.join("b.yaml")]));
    watched.reload_pending().unwrap();
    assert!(has(&mut watched, "b"));
    // ...but after a failed reload, the next one lists everything.
    let aside = dir.path().join("aside");
    std::fs::rename(&root, &aside).unwrap();
    watched.add_events(events([root.clone()]));
    assert!(watched.reload_pending().is_err());
    std::fs::rename(&aside, &root).unwrap();
    std::fs::write(root.join("c.yaml"), cm("c")).unwrap();
    watched.reload_pending().unwrap();
    assert!(has(&mut watched, "c") && has(&mut watched, "b"));
}
