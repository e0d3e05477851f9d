//! A zero-drop upgrade (docs/upgrades.md), driven at the top: on SIGUSR2 the running process
//! (`sender`) starts the binary at the path it was started from, with the same arguments, and
//! hands it the listening sockets, then each idle client and idle server (`servers`) over a
//! private socketpair; the new process (`receiver`) takes them and serves them. The wire is
//! `upgrade/`; the session's part is `session/handover.rs`, the pool's `pool/handover.rs`.

mod receiver;
mod sender;
mod servers;

pub use receiver::take_over;
pub use sender::hand_over;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable naming the channel's descriptor in the new process.
pub const CHANNEL_FD_VAR: &str = "SLUICE_UPGRADE_FD";

/// Environment variables starting with this are test hooks (docs/upgrades.md, "Testing"): the
/// old process passes them to the first new process it starts, and never further.
const TEST_HOOK_PREFIX: &str = "SLUICE_UPGRADE_TEST_";

/// The executable and arguments this process was started with, taken before anything could
/// replace the file (an upgrade starts whatever is at that path then).
static COMMAND_LINE: OnceLock<(PathBuf, Vec<OsString>)> = OnceLock::new();

/// Records the command line for a later upgrade; the binary calls this first thing.
pub fn remember_command_line() {
    let mut args = std::env::args_os();
    let argv0 = args.next().map(PathBuf::from);
    let exe = std::env::current_exe()
        .ok()
        .or(argv0)
        .unwrap_or_else(|| PathBuf::from("sluice"));
    let _ = COMMAND_LINE.set((exe, args.collect()));
}
