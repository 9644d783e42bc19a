//! Prepared instances: set up as far as they go without the function's sockets.
//!
//! A function with `faasd.dev/prepare=true` keeps one while it is stopped. A process
//! instance is cloned into its namespaces and cgroup, its mounts made, its privileges
//! dropped and its system call filter loaded, and its function (pid 2) forked from the
//! init; a container's task runs, its pid 1 (faasd's shim) connected to faasd. Each waits
//! on a hand-over socket of its own. A dynamically linked program is exec'd too, and held
//! before `main` ([`super::preload`]): its first connection costs one byte on that socket.
//! Any other costs one message with the sockets and the exec of the function's command.
//! Either way every guarantee of the sandbox was in place before, none is left for later.

use std::{
    io::{self, Write},
    os::{fd::RawFd, unix::net::UnixStream},
};

use sendfd::SendWithFd;

use super::{Instance, RuntimeError, process::ExecReport};

/// An instance waiting for its sockets.
#[derive(Debug)]
pub struct Prepared {
    /// The instance; its pidfd says when it ends, prepared or not.
    pub instance: Instance,
    handover: UnixStream,
    /// Process instances: EOF once the command has been exec'd.
    exec: Option<ExecReport>,
    /// A program held before `main` ([`super::preload`]), its sockets in place already.
    held: bool,
}

impl Prepared {
    pub(crate) fn new(
        instance: Instance,
        handover: UnixStream,
        exec: Option<ExecReport>,
        held: bool,
    ) -> Self {
        Self {
            instance,
            handover,
            exec,
            held,
        }
    }

    /// Hands the instance its sockets (none for an image that binds its own port) and
    /// their names: one message on a socket nobody else writes to, which does not block.
    /// The kernel has its own references to the descriptors once this returns. A held
    /// program has its sockets: the message is one byte, which lets it on to `main`.
    pub fn go(self, names: &str, fds: &[RawFd]) -> Result<Going, (Instance, RuntimeError)> {
        // A message of no bytes would carry nothing, not even the descriptors.
        let payload = if names.is_empty() { "-" } else { names };
        let sent = match self.held {
            true => (&self.handover).write(b"g"),
            false => self.handover.send_with_fd(payload.as_bytes(), fds),
        };
        match sent {
            Ok(_) => Ok(Going {
                instance: self.instance,
                exec: self.exec,
            }),
            Err(source) => Err((
                self.instance,
                RuntimeError::Io {
                    op: "handing the sockets to the prepared instance",
                    source,
                },
            )),
        }
    }
}

/// A prepared instance that has its sockets.
#[derive(Debug)]
pub struct Going {
    instance: Instance,
    exec: Option<ExecReport>,
}

impl Going {
    /// Returns the instance once its command runs, or with the error (the instance is then
    /// the caller's to kill and reap). Blocks for the exec of a process instance (well
    /// under a millisecond): call it from a blocking thread.
    pub fn running(self) -> Result<Instance, (Instance, RuntimeError)> {
        match self.exec.map(ExecReport::wait) {
            Some(Err(e)) => Err((self.instance, e)),
            _ => Ok(self.instance),
        }
    }
}

/// The hand-over end for a container's shim, taken from the accepted connection.
pub(crate) fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<UnixStream> {
    let s = stream.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}
