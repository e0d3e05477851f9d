//! systemd's readiness protocol (sd_notify): READY once listening, RELOADING then READY around a
//! reload, STOPPING at shutdown, and a one-line STATUS. Without `NOTIFY_SOCKET` nothing is sent.

use sd_notify::NotifyState;

/// Tells systemd the pooler accepts connections (Type=notify waits for this).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd that this process, started by an upgrade, is now the service's main process
/// and ready (the unit needs NotifyAccess=all: the message comes from a process systemd did
/// not start).
pub fn main_pid_ready(status: &str) {
    send(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status(status),
    ]);
}

/// Tells systemd a reload began (with the monotonic time systemd asks to go with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Tells systemd the pooler is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Replaces the one-line status `systemctl status` shows.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
