//! Spawning etcd and kube-apiserver so that they never outlive whoever needs them.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Mutex, Once, OnceLock, mpsc};
use std::thread;

/// How long the spawned processes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Until this process ends, however it ends (normal exit, panic, SIGKILL): for tests.
    Process,
    /// In their own session, outliving this process; stopped through their pid files.
    Detached,
}

pub(crate) fn spawn(mut cmd: Command, lifetime: Lifetime) -> io::Result<Child> {
    match lifetime {
        Lifetime::Detached => {
            // SAFETY: only async-signal-safe syscalls run between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    mark_inherited_fds_cloexec();
                    // A session of their own: `make` returning or Ctrl-C in that terminal
                    // must not take the control plane down.
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.spawn()
        }
        Lifetime::Process => {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: only async-signal-safe syscalls run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    mark_inherited_fds_cloexec();
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // We may have died between fork and prctl; then nobody would kill us.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
            let (reply, result) = mpsc::channel();
            spawner()
                .send((cmd, reply))
                .map_err(|_| io::Error::other("spawner thread is gone"))?;
            result.recv().map_err(|_| io::Error::other("spawner thread is gone"))?
        }
    }
}

/// Inherited descriptors (a jobserver pipe from make, the test harness's sockets) would keep
/// their other ends open for as long as etcd runs. Failure (kernel < 5.11) is harmless.
fn mark_inherited_fds_cloexec() {
    // SAFETY: a plain syscall on our own descriptor table.
    unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("cyclr-testenv-spawner".into())
            .spawn(move || {
                // PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and a
                // test's thread ends with the test. Forking here instead ties the children to
                // the process: the sender lives in a static, so this loop never ends.
                for (mut cmd, reply) in incoming {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the cyclr-testenv spawner thread");
        requests
    })
}

struct AtExit {
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
}

static AT_EXIT: Mutex<AtExit> = Mutex::new(AtExit {
    children: Vec::new(),
    dirs: Vec::new(),
});

/// Kills `children` when the process exits normally, before the directories registered with
/// [`remove_dir_at_exit`] are removed. PDEATHSIG covers every other way of dying, but leaves
/// the directories behind (they are swept by the next run).
pub(crate) fn kill_at_exit(children: Vec<Child>) {
    register_at_exit();
    AT_EXIT.lock().unwrap().children.extend(children);
}

pub(crate) fn remove_dir_at_exit(dir: PathBuf) {
    register_at_exit();
    AT_EXIT.lock().unwrap().dirs.push(dir);
}

fn register_at_exit() {
    static ONCE: Once = Once::new();
    // SAFETY: `cleanup` neither panics nor unwinds.
    ONCE.call_once(|| unsafe {
        libc::atexit(cleanup);
    });
}

extern "C" fn cleanup() {
    // try_lock: a thread holding the lock at exit must not hang the exit; PDEATHSIG still
    // kills the children then.
    let Ok(mut at_exit) = AT_EXIT.try_lock() else {
        return;
    };
    for child in &mut at_exit.children {
        let _ = child.kill();
        let _ = child.wait();
    }
    for dir in &at_exit.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
