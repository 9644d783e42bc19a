//! A containerd for faasd's tests and demo: the system's when one answers on its socket
//! (`up` only), otherwise a private one with its own config, root, state and socket, which
//! is stopped when the guard is dropped. Nothing here touches a system containerd's files.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Result, step};

/// The socket a system containerd listens on.
pub const SYSTEM_SOCKET: &str = "/run/containerd/containerd.sock";

/// A running containerd; a private one stops when this is dropped.
#[derive(Debug)]
pub struct Containerd {
    pub socket: PathBuf,
    child: Option<Child>,
}

/// Whether something answers on the socket.
fn answers(socket: &Path) -> bool {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Containerd {
    /// The system containerd if it runs, else a private one under `dir`.
    pub fn system_or_private(dir: &Path, name: &str) -> Result<Self> {
        if answers(Path::new(SYSTEM_SOCKET)) {
            println!("    ✓ using the system containerd at {SYSTEM_SOCKET}");
            return Ok(Self {
                socket: SYSTEM_SOCKET.into(),
                child: None,
            });
        }
        Self::private(dir, name)
    }

    /// Starts a private containerd whose files all live under `dir` (its state, which
    /// holds sockets, under /run/faasd-xtask/`name`, where socket paths stay short).
    pub fn private(dir: &Path, name: &str) -> Result<Self> {
        let state = PathBuf::from("/run/faasd-xtask").join(name);
        let socket = state.join("containerd.sock");
        let root = dir.join("root");
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let pidfile = dir.join("containerd.pid");
        stop_previous(&pidfile);
        let config = dir.join("config.toml");
        // The CRI plugin is for Kubernetes and only slows the start; version 2 is the
        // config schema of containerd 1.6 and 1.7.
        let text = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
             [grpc]\n  address = \"{}\"\n\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
            root.display(),
            state.display(),
            socket.display(),
            socket.display(),
        );
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        step(&format!(
            "starting a private containerd ({}, log in {})",
            socket.display(),
            dir.join("containerd.log").display()
        ));
        let log = std::fs::File::create(dir.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            // Its own process group: a Ctrl-C meant for `up` must not stop containerd
            // before faasd has deleted its containers.
            .process_group(0)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting containerd: {e} (cargo xtask setup installs it)"))?;
        let _ = std::fs::write(&pidfile, child.id().to_string());
        let mut me = Self {
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers(&me.socket) {
            if let Some(c) = me.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!(
                    "containerd exited during start ({status}); see {}",
                    dir.join("containerd.log").display()
                ));
            }
            if Instant::now() > deadline {
                return Err("containerd did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("    ✓ containerd answers");
        Ok(me)
    }
}

/// A private containerd left by an interrupted run would hold the socket.
fn stop_previous(pidfile: &Path) {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "containerd" {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(pidfile);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}
