// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

#[cfg(target_os = "linux")]
use log::{debug, error, warn};
use nix::errno::Errno;
#[cfg(target_os = "linux")]
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, RecvMsg, SockFlag, SockType, UnixAddr,
};
#[cfg(target_os = "linux")]
use nix::sys::stat;
#[cfg(target_os = "linux")]
use nix::sys::time::TimeVal;
use nix::{Error, NixPath};
use std::collections::{HashMap, HashSet};
#[cfg(target_os = "linux")]
use std::io::{IoSlice, IoSliceMut};
#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
#[cfg(target_os = "linux")]
use std::{thread, time};

// Utilities to transfer file descriptors between sockets, e.g. during graceful upgrades.
//
// aigw: the socket is a door to the listening sockets, so both ends check who is on the
// other side: the directory it lives in must be private to this user (or root), the
// receiver's socket file is 0600, and each end reads the other's uid with SO_PEERCRED and
// deals only with the same uid or root. Malformed handovers are errors, never panics.

/// The most listening sockets one handover carries; the sender refuses more, and the
/// receiver refuses a handover that brings more.
const MAX_FDS: usize = 32;
/// The longest list of bind addresses (space-separated) one handover carries.
const MAX_PAYLOAD: usize = 2048;

/// Container for open file descriptors and their associated bind addresses.
pub struct Fds {
    map: HashMap<String, RawFd>,
}

impl Fds {
    pub fn new() -> Self {
        Fds {
            map: HashMap::new(),
        }
    }

    pub fn add(&mut self, bind: String, fd: RawFd) {
        self.map.insert(bind, fd);
    }

    pub fn get(&self, bind: &str) -> Option<&RawFd> {
        self.map.get(bind)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn serialize(&self) -> (Vec<String>, Vec<RawFd>) {
        self.map.iter().map(|(key, val)| (key.clone(), val)).unzip()
    }

    /// Adds each bind address with its descriptor. Counts that differ are an error
    /// (`EINVAL`) and add nothing; the descriptors stay the caller's.
    pub fn deserialize(&mut self, binds: Vec<String>, fds: Vec<RawFd>) -> Result<(), Error> {
        if binds.len() != fds.len() {
            return Err(Errno::EINVAL);
        }
        for (bind, fd) in binds.into_iter().zip(fds) {
            self.map.insert(bind, fd);
        }
        Ok(())
    }

    pub fn send_to_sock<P>(&self, path: &P) -> Result<usize, Error>
    where
        P: ?Sized + NixPath + std::fmt::Display,
    {
        let (vec_key, vec_fds) = self.serialize();
        let mut ser_buf: [u8; MAX_PAYLOAD] = [0; MAX_PAYLOAD];
        let ser_key_size = serialize_vec_string(&vec_key, &mut ser_buf)?;
        send_fds_to(vec_fds, &ser_buf[..ser_key_size], path, None)
    }

    /// Receives the listening sockets handed over on `path`. Every descriptor must come
    /// with its bind address and be a listening stream socket; otherwise nothing is kept
    /// (all received descriptors are closed) and the handover is an error.
    pub fn get_from_sock<P>(&mut self, path: &P) -> Result<(), Error>
    where
        P: ?Sized + NixPath + std::fmt::Display,
    {
        let mut de_buf: [u8; MAX_PAYLOAD] = [0; MAX_PAYLOAD];
        let (fds, bytes) = get_fds_from(path, &mut de_buf, None)?;
        let keys = deserialize_vec_string(&de_buf[..bytes])?;
        if keys.len() != fds.len() {
            log::error!(
                "upgrade socket {path}: {} descriptor(s) came with {} bind address(es); refusing the handover",
                fds.len(),
                keys.len()
            );
            return Err(Errno::EINVAL);
        }
        for (key, fd) in keys.iter().zip(&fds) {
            check_listener(key, fd)?;
        }
        self.deserialize(keys, fds.into_iter().map(IntoRawFd::into_raw_fd).collect())
    }

    /// Close and remove inherited listening fds whose bind addresses are absent from `keep`.
    ///
    /// An unclaimed `SO_REUSEPORT` socket remains active without an acceptor and can black-hole
    /// connections. Removing it also prevents it from being transferred to the next process.
    /// Returns the addresses removed from the table.
    #[cfg(unix)]
    pub fn close_unclaimed(&mut self, keep: &HashSet<String>) -> Vec<String> {
        let mut closed = Vec::new();
        self.map.retain(|bind, fd| {
            if keep.contains(bind) {
                return true;
            }
            if let Err(e) = nix::unistd::close(*fd) {
                log::warn!(
                    "Failed to close orphaned inherited listening socket fd {fd} ({bind}): {e}"
                );
            }
            closed.push(bind.clone());
            false
        });
        closed
    }
}

/// A descriptor handed over for `name` must be a listening stream socket: anything else
/// (a file, a pipe, a connected socket) would be served as if it were the listener.
fn check_listener(name: &str, fd: &OwnedFd) -> Result<(), Error> {
    #[cfg(target_os = "linux")]
    {
        let listening = socket::getsockopt(fd, sockopt::AcceptConn);
        let kind = socket::getsockopt(fd, sockopt::SockType);
        if let (Ok(true), Ok(SockType::Stream)) = (listening, kind) {
            return Ok(());
        }
        error!(
            "the descriptor handed over for {name} is not a listening stream socket; refusing the handover"
        );
        Err(Errno::EINVAL)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (name, fd);
        Err(Errno::ENOTSUP)
    }
}

/// Writes the bind addresses, space-separated, into `buf`. An address that is empty or
/// holds whitespace would not be read back as one, and a list longer than `buf` would be
/// cut: both are errors rather than a handover the receiver misreads.
fn serialize_vec_string(vec_string: &[String], buf: &mut [u8]) -> Result<usize, Error> {
    if let Some(bad) = vec_string
        .iter()
        .find(|s| s.is_empty() || s.bytes().any(|b| b.is_ascii_whitespace()))
    {
        log::error!(
            "cannot hand over the listener {bad:?}: its address is empty or holds whitespace"
        );
        return Err(Errno::EINVAL);
    }
    let joined = vec_string.join(" ");
    let Some(dest) = buf.get_mut(..joined.len()) else {
        log::error!(
            "cannot hand over the listeners: their addresses take {} bytes, more than {}",
            joined.len(),
            buf.len()
        );
        return Err(Errno::EMSGSIZE);
    };
    dest.copy_from_slice(joined.as_bytes());
    Ok(joined.len())
}

fn deserialize_vec_string(buf: &[u8]) -> Result<Vec<String>, Error> {
    let joined = std::str::from_utf8(buf).map_err(|_| Error::EINVAL)?;
    Ok(joined.split_ascii_whitespace().map(String::from).collect())
}

/// The effective uid of this process: the peer on the upgrade socket must have it, or be
/// root.
fn euid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the process on the other end of the upgrade socket may hand listeners over or
/// receive them: the same user as this one, or root (who could take them anyway).
fn peer_allowed(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// `path` with its directory resolved (symlinks are followed here, once, and the result
/// is what is bound or connected to), after checking that only this user or root can
/// add, remove or rename anything on the way to it: the directory itself is owned by
/// this user or root and writable by no one else; each directory above it is owned by
/// this user or root and is writable by no one else or sticky (as /tmp is, where others
/// may add names but not move ours). In a directory others can write, another user
/// could listen at the path first, or swap it between our checks and our use.
pub fn private_socket_path(path: &Path) -> std::io::Result<PathBuf> {
    use std::io::{Error as IoError, ErrorKind};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(IoError::new(
            ErrorKind::InvalidInput,
            format!("{} does not name a socket file", path.display()),
        ));
    };
    if !path.is_absolute() {
        return Err(IoError::new(
            ErrorKind::InvalidInput,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let dir = std::fs::canonicalize(dir)?;
    let me = euid();
    let mut at = Some(dir.as_path());
    let mut innermost = true;
    while let Some(d) = at {
        let meta = std::fs::metadata(d)?;
        let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
        if owner != me && owner != 0 {
            return Err(IoError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "directory {} belongs to uid {owner}, not to uid {me} or root",
                    d.display()
                ),
            ));
        }
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if others_write && (innermost || !sticky) {
            return Err(IoError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "directory {} is writable by other users (mode {mode:o}); use a private one",
                    d.display()
                ),
            ));
        }
        innermost = false;
        at = d.parent();
    }
    Ok(dir.join(name))
}

/// `path` checked with [`private_socket_path`], as an `Errno`: the reason is logged.
/// A directory that does not exist (yet) is `ENOENT`.
#[cfg(target_os = "linux")]
fn checked_socket_path<P>(path: &P) -> Result<PathBuf, Error>
where
    P: ?Sized + NixPath + std::fmt::Display,
{
    use std::os::unix::ffi::OsStrExt;
    let given = path.with_nix_path(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))?;
    private_socket_path(&given).map_err(|e| match e.raw_os_error() {
        Some(code) => Errno::from_raw(code),
        None => {
            error!("upgrade socket {path}: {e}");
            Errno::EPERM
        }
    })
}

/// Receives the descriptors and the payload handed over on `path`, from a process of
/// the same user or root. The payload must fit `payload`; the descriptors are owned (and
/// closed on every error).
#[cfg(target_os = "linux")]
pub fn get_fds_from<P>(
    path: &P,
    payload: &mut [u8],
    max_retry: Option<usize>,
) -> Result<(Vec<OwnedFd>, usize), Error>
where
    P: ?Sized + NixPath + std::fmt::Display,
{
    let max_retry = max_retry.unwrap_or(MAX_RETRY);
    let sock_path = checked_socket_path(path).inspect_err(|e| {
        error!("upgrade socket {path}: cannot receive the listening sockets there: {e}")
    })?;

    let listen_fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let unix_addr = UnixAddr::new(&sock_path)?;
    // A socket left by an earlier receiver is replaced; anything else at the path (a
    // file, a symlink) is not ours to delete. The directory is private, so nothing can
    // appear between this and bind.
    match std::fs::symlink_metadata(&sock_path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            nix::unistd::unlink(&sock_path)?;
            debug!("unlinked the stale socket {path}");
        }
        Ok(_) => {
            error!("upgrade socket {path}: something that is not a socket is in the way");
            return Err(Errno::EEXIST);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            error!("upgrade socket {path}: {e}");
            return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
        }
    }
    socket::bind(listen_fd.as_raw_fd(), &unix_addr).inspect_err(|e| {
        error!("upgrade socket {path}: cannot bind: {e}");
    })?;
    // From here on the path is ours to remove, whatever happens.
    let result = listen_and_receive(&listen_fd, &sock_path, payload, max_retry);
    drop(listen_fd);
    if let Err(e) = nix::unistd::unlink(&sock_path) {
        warn!("upgrade socket {path}: cannot remove it: {e}");
    }
    result.inspect_err(|e| error!("Giving up reading socket from: {path}, error: {e:?}"))
}

#[cfg(target_os = "linux")]
fn listen_and_receive(
    listen_fd: &OwnedFd,
    sock_path: &Path,
    payload: &mut [u8],
    max_retry: usize,
) -> Result<(Vec<OwnedFd>, usize), Error> {
    // Only this user may connect (bind made it as the umask allows). The peer is checked
    // again once connected: the file mode is not the guard, SO_PEERCRED is.
    stat::fchmodat(
        // SAFETY: AT_FDCWD is a well-defined POSIX sentinel constant used by *at() syscalls
        // to indicate the current working directory. It is not a real file descriptor and does
        // not require ownership or lifetime guarantees.
        unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) },
        sock_path,
        stat::Mode::from_bits_truncate(0o600),
        stat::FchmodatFlags::FollowSymlink,
    )?;

    socket::listen(
        listen_fd,
        Backlog::new(8).expect("8 is well within SOMAXCONN"),
    )?;

    let mut retried = 0;
    loop {
        let conn = accept_with_retry_timeout(listen_fd.as_raw_fd(), max_retry, &mut retried)?;
        match socket::getsockopt(&conn, sockopt::PeerCredentials) {
            Ok(peer) if peer_allowed(peer.uid()) => return receive_handover(&conn, payload),
            // Whatever it sent (descriptors included) is dropped with the connection,
            // unread; the rightful sender may still come.
            Ok(peer) => warn!(
                "upgrade socket {}: refused a connection from uid {} (pid {}): only uid {} or root may hand listeners over",
                sock_path.display(),
                peer.uid(),
                peer.pid(),
                euid()
            ),
            Err(e) => warn!(
                "upgrade socket {}: refused a connection whose credentials cannot be read: {e}",
                sock_path.display()
            ),
        }
    }
}

/// How long a connected sender has to hand over everything, from connecting to closing.
#[cfg(target_os = "linux")]
const RECEIVE_TIMEOUT: time::Duration = time::Duration::from_secs(5);
/// The most descriptors Linux passes in one message (SCM_MAX_FD): a control buffer this
/// large is never truncated, so no received descriptor escapes being owned.
#[cfg(target_os = "linux")]
const SCM_MAX_FD: usize = 253;

/// Reads the payload until the sender closes, and every descriptor that comes with it.
/// Bounded: at most `payload.len()` bytes, [`MAX_FDS`] descriptors, [`RECEIVE_TIMEOUT`].
#[cfg(target_os = "linux")]
fn receive_handover(conn: &OwnedFd, payload: &mut [u8]) -> Result<(Vec<OwnedFd>, usize), Error> {
    let deadline = time::Instant::now() + RECEIVE_TIMEOUT;
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(time::Instant::now());
        if left.is_zero() {
            error!("the sender did not finish the handover within {RECEIVE_TIMEOUT:?}");
            return Err(Errno::ETIMEDOUT);
        }
        let left = TimeVal::new(
            left.as_secs() as _,
            // at least 1 µs: zero would mean no timeout at all
            left.subsec_micros().max(1) as _,
        );
        socket::setsockopt(conn, sockopt::ReceiveTimeout, &left)?;
        // Once `payload` is full, one more byte tells a complete payload from a longer one.
        let mut spare = [0u8; 1];
        let full = len == payload.len();
        let buf = if full {
            &mut spare[..]
        } else {
            &mut payload[len..]
        };
        let mut io_vec = [IoSliceMut::new(buf); 1];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        // MSG_CMSG_CLOEXEC sets FD_CLOEXEC on the received descriptors atomically. These
        // listening sockets are kept for the rest of the process's lifetime, so without it any
        // subprocess an application built on pingora execs inherits them, and can keep the
        // port bound after the server itself is gone.
        let msg: RecvMsg<UnixAddr> = match socket::recvmsg(
            conn.as_raw_fd(),
            &mut io_vec,
            Some(&mut cmsg_buf),
            socket::MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                error!("the sender did not finish the handover within {RECEIVE_TIMEOUT:?}");
                return Err(Errno::ETIMEDOUT);
            }
            Err(e) => return Err(e),
        };
        let bytes = msg.bytes;
        for cmsg in msg.cmsgs()? {
            if let socket::ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: each was just installed in this process by recvmsg and is owned
                // nowhere else.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            } else {
                warn!("Unexpected control messages: {cmsg:?}")
            }
        }
        if fds.len() > MAX_FDS {
            error!("the sender handed over more than {MAX_FDS} descriptors; refusing them all");
            return Err(Errno::E2BIG);
        }
        if bytes == 0 {
            return Ok((fds, len));
        }
        if full {
            error!(
                "the sender's payload is longer than {} bytes; refusing the handover",
                payload.len()
            );
            return Err(Errno::EMSGSIZE);
        }
        len += bytes;
    }
}

#[cfg(not(target_os = "linux"))]
pub fn get_fds_from<P>(
    _path: &P,
    _payload: &mut [u8],
    _max_retry: Option<usize>,
) -> Result<(Vec<OwnedFd>, usize), Error>
where
    P: ?Sized + NixPath + std::fmt::Display,
{
    log::error!("Upgrade is not currently supported outside of Linux platforms");
    Err(Errno::ECONNREFUSED)
}

#[cfg(target_os = "linux")]
const MAX_RETRY: usize = 5;
#[cfg(target_os = "linux")]
const RETRY_INTERVAL: time::Duration = time::Duration::from_secs(1);

/// Accepts the next connection; `retried` counts the waits across calls, so refused
/// connections do not extend the whole wait.
#[cfg(target_os = "linux")]
fn accept_with_retry_timeout(
    listen_fd: i32,
    max_retry: usize,
    retried: &mut usize,
) -> Result<OwnedFd, Error> {
    loop {
        match socket::accept4(listen_fd, SockFlag::SOCK_CLOEXEC) {
            // SAFETY: `fd` was just returned by accept(2) and is not owned or closed anywhere
            // else, so the connection is closed on every path out of the caller.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) => {
                if *retried > max_retry {
                    return Err(e);
                }
                match e {
                    Errno::EAGAIN => {
                        error!(
                            "No incoming socket transfer, sleep {RETRY_INTERVAL:?} and try again"
                        );
                        *retried += 1;
                        thread::sleep(RETRY_INTERVAL);
                    }
                    Errno::EINTR => {}
                    _ => {
                        error!("Error accepting socket transfer: {e}");
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Hands `fds` and `payload` over to the process listening on `path`, which must be of
/// the same user or root and in a private directory (see [`private_socket_path`]).
#[cfg(target_os = "linux")]
pub fn send_fds_to<P>(
    fds: Vec<RawFd>,
    payload: &[u8],
    path: &P,
    max_retry: Option<usize>,
) -> Result<usize, Error>
where
    P: ?Sized + NixPath + std::fmt::Display,
{
    let max_retry = max_retry.unwrap_or(MAX_RETRY);
    const MAX_NONBLOCKING_POLLS: usize = 20;
    const NONBLOCKING_POLL_INTERVAL: time::Duration = time::Duration::from_millis(500);

    if fds.len() > MAX_FDS {
        error!(
            "cannot hand over {} listening sockets to {path}: at most {MAX_FDS}",
            fds.len()
        );
        return Err(Errno::E2BIG);
    }
    let send_fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut retried = 0;
    let mut nonblocking_polls = 0;

    let conn_result: Result<usize, Error> = loop {
        // Checked on every attempt: the receiver may create the directory while we wait.
        let attempt = checked_socket_path(path).and_then(|sock_path| {
            let unix_addr = UnixAddr::new(&sock_path)?;
            socket::connect(send_fd.as_raw_fd(), &unix_addr)
        });
        match attempt {
            Ok(_) => break Ok(0),
            Err(e) => match e {
                /* If the new process hasn't created the upgrade sock we'll get an ENOENT.
                ECONNREFUSED may happen if the sock wasn't cleaned up
                and the old process tries sending before the new one is listening.
                EACCES may happen if connect() happen before the correct permission is set */
                Errno::ENOENT | Errno::ECONNREFUSED | Errno::EACCES => {
                    /*the server is not ready yet*/
                    retried += 1;
                    if retried > max_retry {
                        error!(
                            "Max retry: {} reached. Giving up sending socket to: {}, error: {:?}",
                            max_retry, path, e
                        );
                        break Err(e);
                    }
                    warn!("server not ready, will try again in {RETRY_INTERVAL:?}");
                    thread::sleep(RETRY_INTERVAL);
                }
                /* handle nonblocking IO */
                Errno::EINPROGRESS => {
                    nonblocking_polls += 1;
                    if nonblocking_polls >= MAX_NONBLOCKING_POLLS {
                        error!("Connect() not ready after retries when sending socket to: {path}",);
                        break Err(e);
                    }
                    warn!("Connect() not ready, will try again in {NONBLOCKING_POLL_INTERVAL:?}",);
                    thread::sleep(NONBLOCKING_POLL_INTERVAL);
                }
                _ => {
                    error!("Error sending socket to: {path}, error: {e:?}");
                    break Err(e);
                }
            },
        }
    };

    // Whoever listens at the path gets the listeners, so it must be us (or root). Its
    // credentials are those it had when it called listen(2).
    let conn_result = conn_result.and_then(|_| {
        let peer = socket::getsockopt(&send_fd, sockopt::PeerCredentials)?;
        if peer_allowed(peer.uid()) {
            return Ok(0);
        }
        error!(
            "upgrade socket {path}: the process listening there runs as uid {} (pid {}), not as uid {} or root; not handing the listening sockets over",
            peer.uid(),
            peer.pid(),
            euid()
        );
        Err(Errno::EPERM)
    });

    match conn_result {
        Ok(_) => {
            let io_vec = [IoSlice::new(payload); 1];
            let scm = socket::ControlMessage::ScmRights(fds.as_slice());
            let cmsg = [scm; 1];
            loop {
                match socket::sendmsg(
                    send_fd.as_raw_fd(),
                    &io_vec,
                    &cmsg,
                    socket::MsgFlags::empty(),
                    None::<&UnixAddr>,
                ) {
                    Ok(result) => break Ok(result),
                    Err(e) => match e {
                        /* handle nonblocking IO */
                        Errno::EAGAIN => {
                            nonblocking_polls += 1;
                            if nonblocking_polls >= MAX_NONBLOCKING_POLLS {
                                error!(
                                    "Sendmsg() not ready after retries when sending socket to: {}",
                                    path
                                );
                                break Err(e);
                            }
                            warn!(
                                "Sendmsg() not ready, will try again in {:?}",
                                NONBLOCKING_POLL_INTERVAL
                            );
                            thread::sleep(NONBLOCKING_POLL_INTERVAL);
                        }
                        _ => break Err(e),
                    },
                }
            }
        }
        Err(e) => Err(e),
    }
    // `send_fd` closes here; the receiver reads until then.
}

#[cfg(not(target_os = "linux"))]
pub fn send_fds_to<P>(
    _fds: Vec<RawFd>,
    _payload: &[u8],
    _path: &P,
    _max_retry: Option<usize>,
) -> Result<usize, Error>
where
    P: ?Sized + NixPath + std::fmt::Display,
{
    Ok(0)
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use log::{debug, error};
    use nix::fcntl;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};

    fn init_log() {
        let _ = env_logger::builder().is_test(true).try_init();
    }

    /// A fresh directory only this user can use, and the socket path `name` in it: the
    /// upgrade socket refuses shared directories such as /tmp itself.
    fn private_sock(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("pingora-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir.join("s.sock").to_str().unwrap().to_owned()
    }

    /// A listening socket, as a handover carries.
    fn listener() -> OwnedFd {
        OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    #[test]
    fn test_add_get() {
        init_log();
        let mut fds = Fds::new();
        let key = "1.1.1.1:80".to_string();
        fds.add(key.clone(), 128);
        assert_eq!(128, *fds.get(&key).unwrap());
    }

    #[test]
    fn test_table_serde() {
        init_log();
        let mut fds = Fds::new();
        let key1 = "1.1.1.1:80".to_string();
        fds.add(key1.clone(), 128);
        let key2 = "1.1.1.1:443".to_string();
        fds.add(key2.clone(), 129);

        let (k, v) = fds.serialize();
        let mut fds2 = Fds::new();
        fds2.deserialize(k, v).unwrap();

        assert_eq!(128, *fds2.get(&key1).unwrap());
        assert_eq!(129, *fds2.get(&key2).unwrap());
    }

    #[test]
    fn test_table_deserialize_counts_must_match() {
        let mut fds = Fds::new();
        assert_eq!(
            fds.deserialize(vec!["a:1".into(), "b:2".into()], vec![128]),
            Err(Errno::EINVAL)
        );
        assert!(fds.is_empty());
    }

    #[test]
    fn test_vec_string_serde() {
        init_log();
        let vec_str: Vec<String> = vec!["aaaa".to_string(), "bbb".to_string()];
        let mut ser_buf: [u8; 1024] = [0; 1024];
        let size = serialize_vec_string(&vec_str, &mut ser_buf).unwrap();
        let de_vec_string = deserialize_vec_string(&ser_buf[..size]).unwrap();
        assert_eq!(de_vec_string.len(), 2);
        assert_eq!(de_vec_string[0], "aaaa");
        assert_eq!(de_vec_string[1], "bbb");
    }

    #[test]
    fn test_vec_string_too_long_or_ambiguous_is_an_error() {
        init_log();
        let mut buf = [0u8; 8];
        // 9 bytes joined: used to be cut to 8 silently
        assert_eq!(
            serialize_vec_string(&["abcd".into(), "efgh".into()], &mut buf),
            Err(Errno::EMSGSIZE)
        );
        assert_eq!(
            serialize_vec_string(&["abc".into(), "efgh".into()], &mut buf),
            Ok(8)
        );
        let mut buf = [0u8; 64];
        for bad in ["/run/a b.sock", "", "a\tb", "a\nb"] {
            assert_eq!(
                serialize_vec_string(&[bad.to_string()], &mut buf),
                Err(Errno::EINVAL),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn test_send_receive_fds() {
        init_log();
        let sock = private_sock("receive");
        let dumb_fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();

        // receiver need to start in another thread since it is blocking
        let path = sock.clone();
        let child = thread::spawn(move || {
            let mut buf: [u8; 32] = [0; 32];
            let (fds, bytes) = get_fds_from(path.as_str(), &mut buf, None).unwrap();
            debug!("{:?}", fds);
            assert_eq!(1, fds.len());
            assert_eq!(32, bytes);
            assert_eq!(1, buf[0]);
            assert_eq!(1, buf[31]);
        });

        let fds = vec![dumb_fd.as_raw_fd()];
        let buf: [u8; 32] = [1; 32];
        match send_fds_to(fds, &buf, sock.as_str(), None) {
            Ok(sent) => {
                assert!(sent > 0);
            }
            Err(e) => {
                error!("{:?}", e);
                panic!()
            }
        }

        child.join().unwrap();
    }

    /// A payload longer than the receiver's buffer is refused, not cut.
    #[test]
    fn test_receive_refuses_a_payload_larger_than_the_buffer() {
        init_log();
        let sock = private_sock("oversize");
        let path = sock.clone();
        let child = thread::spawn(move || {
            let mut buf: [u8; 32] = [0; 32];
            get_fds_from(path.as_str(), &mut buf, None).map(|(fds, n)| (fds.len(), n))
        });
        let dumb = listener();
        let buf: [u8; 33] = [1; 33];
        send_fds_to(vec![dumb.as_raw_fd()], &buf, sock.as_str(), None).unwrap();
        assert_eq!(child.join().unwrap(), Err(Errno::EMSGSIZE));
    }

    /// How many fds in this process refer to a unix socket bound to `path`.
    ///
    /// Reads the socket inodes bound to `path` from /proc/net/unix, then scans
    /// /proc/self/fd for descriptors pointing at them. Filtering by path keeps this
    /// unaffected by unrelated descriptors opened by tests running in parallel.
    fn unix_socket_fds_bound_to(path: &str) -> usize {
        let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
        let inodes: HashSet<&str> = unix
            .lines()
            .filter_map(|line| {
                let mut cols = line.split_whitespace();
                let inode = cols.nth(6)?;
                (cols.next() == Some(path)).then_some(inode)
            })
            .collect();
        if inodes.is_empty() {
            return 0;
        }
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| {
                target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .is_some_and(|inode| inodes.contains(inode))
            })
            .count()
    }

    #[test]
    fn test_receive_does_not_leak_fds() {
        init_log();
        let sock = private_sock("receive3");

        let dumb_fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();

        // receiver need to start in another thread since it is blocking
        let path = sock.clone();
        let child = thread::spawn(move || {
            let mut buf: [u8; 32] = [0; 32];
            let (fds, _) = get_fds_from(path.as_str(), &mut buf, None).unwrap();
            assert_eq!(1, fds.len());

            // The received listener is kept for the lifetime of the process, so it must
            // not be inherited by unrelated children across exec().
            let flags = fcntl::fcntl(&fds[0], fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(
                fcntl::FdFlag::from_bits_truncate(flags).contains(fcntl::FdFlag::FD_CLOEXEC),
                "fd received over SCM_RIGHTS is missing FD_CLOEXEC"
            );

            // The accepted connection is only needed during the transfer itself.
            assert_eq!(
                0,
                unix_socket_fds_bound_to(&path),
                "the accepted transfer socket was left open"
            );
            // The received descriptors are owned, and close when dropped.
        });

        let fds = vec![dumb_fd.as_raw_fd()];
        let buf: [u8; 32] = [1; 32];
        send_fds_to(fds, &buf, sock.as_str(), None).unwrap();

        child.join().unwrap();
    }

    #[test]
    fn test_serde_via_socket() {
        init_log();
        let sock = private_sock("receive2");
        let mut fds = Fds::new();
        let key1 = "1.1.1.1:80".to_string();
        let dumb_fd1 = listener();
        fds.add(key1.clone(), dumb_fd1.as_raw_fd());
        let key2 = "1.1.1.1:443".to_string();
        let dumb_fd2 = listener();
        fds.add(key2.clone(), dumb_fd2.as_raw_fd());

        let path = sock.clone();
        let child = thread::spawn(move || {
            let mut fds2 = Fds::new();
            fds2.get_from_sock(path.as_str()).unwrap();
            assert!(*fds2.get(&key1).unwrap() > 0);
            assert!(*fds2.get(&key2).unwrap() > 0);
        });

        fds.send_to_sock(sock.as_str()).unwrap();
        child.join().unwrap();
    }

    /// Receives with `Fds::get_from_sock` while `send` hands over whatever it likes.
    fn get_from_sock_after(name: &str, send: impl FnOnce(&str)) -> Result<(), Error> {
        init_log();
        let sock = private_sock(name);
        let path = sock.clone();
        let child = thread::spawn(move || Fds::new().get_from_sock(path.as_str()));
        send(&sock);
        child.join().unwrap()
    }

    #[test]
    fn test_more_fds_than_names_is_an_error() {
        let result = get_from_sock_after("counts", |sock| {
            let (a, b) = (listener(), listener());
            send_fds_to(
                vec![a.as_raw_fd(), b.as_raw_fd()],
                b"1.1.1.1:80",
                sock,
                None,
            )
            .unwrap();
        });
        assert_eq!(result, Err(Errno::EINVAL));
        let result = get_from_sock_after("counts2", |sock| {
            let a = listener();
            send_fds_to(vec![a.as_raw_fd()], b"1.1.1.1:80 1.1.1.1:81", sock, None).unwrap();
        });
        assert_eq!(result, Err(Errno::EINVAL));
    }

    #[test]
    fn test_descriptors_that_are_not_listeners_are_refused() {
        let result = get_from_sock_after("connected", |sock| {
            let (a, _b) = UnixStream::pair().unwrap();
            send_fds_to(vec![a.as_raw_fd()], b"1.1.1.1:80", sock, None).unwrap();
        });
        assert_eq!(result, Err(Errno::EINVAL));
        let result = get_from_sock_after("file", |sock| {
            let f = std::fs::File::open("/dev/null").unwrap();
            send_fds_to(vec![f.as_raw_fd()], b"1.1.1.1:80", sock, None).unwrap();
        });
        assert_eq!(result, Err(Errno::EINVAL));
    }

    #[test]
    fn test_more_than_max_fds_are_refused_both_ways() {
        init_log();
        let many: Vec<OwnedFd> = (0..MAX_FDS + 1).map(|_| listener()).collect();
        let raw: Vec<RawFd> = many.iter().map(|f| f.as_raw_fd()).collect();
        let sock = private_sock("many-send");
        assert_eq!(
            send_fds_to(raw.clone(), b"x", sock.as_str(), Some(0)),
            Err(Errno::E2BIG)
        );

        // A sender that does not check: the receiver refuses the lot.
        let sock = private_sock("many-recv");
        let path = sock.clone();
        let child = thread::spawn(move || {
            let mut buf = [0u8; 64];
            get_fds_from(path.as_str(), &mut buf, None).map(|(fds, _)| fds.len())
        });
        assert!(wait_for(&sock));
        let conn = UnixStream::connect(&sock).unwrap();
        let scm = [socket::ControlMessage::ScmRights(&raw)];
        socket::sendmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &[IoSlice::new(b"x")],
            &scm,
            socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(conn);
        assert_eq!(child.join().unwrap(), Err(Errno::E2BIG));
    }

    fn wait_for(path: &str) -> bool {
        (0..500).any(|_| {
            thread::sleep(time::Duration::from_millis(10));
            Path::new(path).exists()
        })
    }

    /// A connected sender that never finishes is given up on, not waited for forever.
    #[test]
    fn test_a_silent_sender_times_out() {
        init_log();
        let sock = private_sock("silent");
        let path = sock.clone();
        let child = thread::spawn(move || {
            let mut buf = [0u8; 64];
            let start = time::Instant::now();
            let r = get_fds_from(path.as_str(), &mut buf, None).map(|(fds, _)| fds.len());
            (r, start.elapsed())
        });
        assert!(wait_for(&sock));
        let _conn = UnixStream::connect(&sock).unwrap();
        let (result, took) = child.join().unwrap();
        assert_eq!(result, Err(Errno::ETIMEDOUT));
        assert!(
            took < RECEIVE_TIMEOUT + time::Duration::from_secs(2),
            "{took:?}"
        );
    }

    /// The receiver's socket is for this user only, and it replaces a stale socket but
    /// nothing else.
    #[test]
    fn test_receiver_socket_is_private_and_replaces_only_sockets() {
        init_log();
        let sock = private_sock("mode");
        let stale = UnixListener::bind(&sock).unwrap();
        drop(stale);
        assert_ne!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        let path = sock.clone();
        let child = thread::spawn(move || {
            let mut buf = [0u8; 64];
            get_fds_from(path.as_str(), &mut buf, None).map(|(fds, _)| fds.len())
        });
        // the stale socket is replaced by the receiver's, which has mode 0600
        let private = (0..500).any(|_| {
            thread::sleep(time::Duration::from_millis(10));
            std::fs::symlink_metadata(&sock).is_ok_and(|m| m.mode() & 0o777 == 0o600)
        });
        assert!(private, "the receiver's socket is not 0600");
        let dumb = listener();
        send_fds_to(vec![dumb.as_raw_fd()], b"x", sock.as_str(), None).unwrap();
        assert_eq!(child.join().unwrap(), Ok(1));
        assert!(
            !Path::new(&sock).exists(),
            "the socket is removed after the handover"
        );

        // a regular file or a symlink in the way is an error, and stays
        for make in [
            (|p: &str| std::fs::write(p, b"keep").unwrap()) as fn(&str),
            |p: &str| std::os::unix::fs::symlink("/etc/passwd", p).unwrap(),
        ] {
            let sock = private_sock("in-the-way");
            make(&sock);
            let mut buf = [0u8; 8];
            assert_eq!(
                get_fds_from(sock.as_str(), &mut buf, Some(0)).map(|(f, _)| f.len()),
                Err(Errno::EEXIST)
            );
            assert!(std::fs::symlink_metadata(&sock).is_ok());
        }
    }

    /// Neither end uses a socket in a directory others can write (where they could be
    /// listening first, or swap the path), and both see through symlinks to the real one.
    #[test]
    fn test_shared_directories_are_refused_both_ways() {
        init_log();
        let base = std::env::temp_dir().join(format!("pingora-{}-shared", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&base)
            .unwrap();
        for mode in [0o777, 0o1777, 0o770, 0o1770] {
            let dir = base.join(format!("{mode:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let sock = dir.join("s.sock");
            let e = private_socket_path(&sock).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("writable by other users"), "{e}");
            let sock = sock.to_str().unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(
                get_fds_from(sock, &mut buf, Some(0)).map(|(f, _)| f.len()),
                Err(Errno::EPERM)
            );
            assert!(!Path::new(sock).exists(), "nothing was bound in {mode:o}");
            let dumb = listener();
            assert_eq!(
                send_fds_to(vec![dumb.as_raw_fd()], b"x", sock, Some(3)),
                Err(Errno::EPERM)
            );

            // A private directory reached through a symlink kept in a shared one is fine,
            // and what is used is the real path.
            let real = base.join(format!("real-{mode:o}"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&real)
                .unwrap();
            let link = dir.join("link");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            assert_eq!(
                private_socket_path(&link.join("s.sock")).unwrap(),
                real.join("s.sock")
            );
        }
        // A sticky shared directory is fine further up (this is /tmp), not as the socket's.
        let sticky = base.join("1777");
        let inner = sticky.join("mine");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&inner)
            .unwrap();
        assert!(private_socket_path(&inner.join("s.sock")).is_ok());
        let open = base.join("777").join("mine");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&open)
            .unwrap();
        assert!(private_socket_path(&open.join("s.sock")).is_err());
        assert!(private_socket_path(Path::new("relative/s.sock")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn test_send_fds_to_respects_configurable_timeout() {
        init_log();
        use std::time::Instant;

        let dumb_fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();

        let fds = vec![dumb_fd.as_raw_fd()];
        let buf: [u8; 32] = [1; 32];

        // Try to send with a custom max_retries of 2
        let start = Instant::now();
        let sock = private_sock("config-send");
        let result = send_fds_to(fds, &buf, sock.as_str(), Some(2));
        let elapsed = start.elapsed();

        // Should fail after 2 retries with RETRY_INTERVAL (1 second) between each
        // Total time should be approximately 2 seconds
        assert!(result.is_err());
        assert!(
            elapsed.as_secs() >= 2,
            "Expected at least 2 seconds, got {:?}",
            elapsed
        );
        assert!(
            elapsed.as_secs() < 4,
            "Expected less than 4 seconds, got {:?}",
            elapsed
        );
    }

    #[test]
    fn test_get_fds_from_respects_configurable_timeout() {
        init_log();
        use std::time::Instant;

        let mut buf: [u8; 32] = [0; 32];

        // Try to receive with a custom max_retries of 2
        let start = Instant::now();
        let sock = private_sock("config-receive");
        let result = get_fds_from(sock.as_str(), &mut buf, Some(2));
        let elapsed = start.elapsed();

        // Should fail after 2 retries with RETRY_INTERVAL (1 second) between each
        // Total time should be approximately 2 seconds
        assert!(result.is_err());
        assert!(
            elapsed.as_secs() >= 2,
            "Expected at least 2 seconds, got {:?}",
            elapsed
        );
        assert!(
            elapsed.as_secs() < 4,
            "Expected less than 4 seconds, got {:?}",
            elapsed
        );
    }
}

#[cfg(all(test, unix))]
mod close_unclaimed_tests {
    use super::Fds;
    use std::collections::HashSet;
    use std::io::{ErrorKind, Read};
    use std::os::unix::io::{FromRawFd, IntoRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    // Closure is observed by reading the other end of a socket pair, which
    // reports end-of-file exactly when its peer is gone. Checking the descriptor
    // *number* would be racy: numbers are process-wide and reassigned
    // lowest-free-first, so a concurrent test in this binary can be handed the
    // number just closed and make it valid again first. Observing ends are
    // non-blocking, so a descriptor that wrongly stayed open fails an assertion
    // rather than hanging.
    //
    // A second owning handle would turn a wrongly closed descriptor into an I/O
    // safety abort of the whole binary, so `Fds` gets raw numbers.

    #[test]
    fn closes_only_unclaimed_fds() {
        let (mut keep_peer, keep_local) = UnixStream::pair().unwrap();
        let (mut drop_peer, drop_local) = UnixStream::pair().unwrap();
        keep_peer.set_nonblocking(true).unwrap();
        drop_peer.set_nonblocking(true).unwrap();
        let keep_fd = keep_local.into_raw_fd();

        let mut fds = Fds::new();
        fds.add("127.0.0.1:80".to_string(), keep_fd);
        fds.add("127.0.0.1:9090".to_string(), drop_local.into_raw_fd());

        let keep: HashSet<String> = ["127.0.0.1:80".to_string()].into_iter().collect();
        let closed = fds.close_unclaimed(&keep);

        assert_eq!(closed, vec!["127.0.0.1:9090".to_string()]);
        assert_eq!(*fds.get("127.0.0.1:80").unwrap(), keep_fd);
        assert!(fds.get("127.0.0.1:9090").is_none());

        // Dropping the map entry is not enough: the descriptor itself has to be
        // closed, which is the leak this function exists to prevent.
        assert!(
            matches!(drop_peer.read(&mut [0u8; 1]), Ok(0)),
            "the unclaimed descriptor was not closed"
        );
        assert!(
            matches!(keep_peer.read(&mut [0u8; 1]), Err(e) if e.kind() == ErrorKind::WouldBlock),
            "the claimed descriptor was closed"
        );

        // `Fds` does not close on drop.
        // SAFETY: asserted open just above, and no other owner remains.
        drop(unsafe { OwnedFd::from_raw_fd(keep_fd) });
    }

    #[test]
    fn empty_keep_set_closes_everything() {
        let (mut peer, local) = UnixStream::pair().unwrap();
        peer.set_nonblocking(true).unwrap();

        let mut fds = Fds::new();
        fds.add("127.0.0.1:9090".to_string(), local.into_raw_fd());

        let closed = fds.close_unclaimed(&HashSet::new());

        assert_eq!(closed, vec!["127.0.0.1:9090".to_string()]);
        assert!(fds.is_empty());
        assert!(
            matches!(peer.read(&mut [0u8; 1]), Ok(0)),
            "the unclaimed descriptor was not closed"
        );
    }
}
