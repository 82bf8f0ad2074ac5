//! Child processes that log to a file, die with the harness, and are reaped on drop.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a SIGTERM'd process gets before SIGKILL.
const GRACEFUL_STOP: Duration = Duration::from_secs(5);

/// A running helper process (NGINX, Envoy, loader) whose stdout and stderr go to one log file.
pub struct ManagedChild {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ManagedChild {
    /// Spawns `command` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> ManagedChild {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let stderr = log.try_clone().expect("clone log file handle");
        command.stdin(Stdio::null()).stdout(log).stderr(stderr);
        die_with_parent(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("spawn {name} ({command:?}): {e}"));
        ManagedChild {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited (or was stopped), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("poll child status"),
            None => Some(ExitStatus::default()),
        }
    }

    /// Panics with the log tail if the process has exited; used while waiting for readiness.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exit_status() {
            panic!(
                "{} exited early with {status}; last log lines:\n{}",
                self.name,
                self.log_tail(5)
            );
        }
    }

    /// Sends SIGTERM while the process runs, without waiting for it to exit.
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            terminate(child);
        }
    }

    /// Asks the process to stop with SIGTERM, then SIGKILLs it if it lingers; reaps it either way.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        terminate(&child);
        let deadline = Instant::now() + GRACEFUL_STOP;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the process at once (SIGKILL) and reaps it: a crash, as far as its peers can tell.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Prints a labelled log tail when the current thread is unwinding from a failed assertion; the
/// components call it from `Drop` so every failing test shows what its processes said.
pub fn print_tail_if_panicking(label: &str, text: &str, lines: usize) {
    if std::thread::panicking() {
        eprintln!("----- {label} (last {lines} lines) -----\n{}", tail(text, lines));
    }
}

#[allow(unsafe_code)]
fn terminate(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Makes the child receive SIGTERM when the thread that spawned it goes away, so a test run that is
/// killed (or times out) leaves no NGINX or loader holding ports. Envoy does this to itself anyway.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
