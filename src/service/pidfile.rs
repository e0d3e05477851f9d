//! The `pidfile`: written at start with this process's id, refused while another live process
//! holds it, removed at exit.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The pidfile this process wrote; removed when dropped.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's id to `path`. A file naming a live process is an error (another
    /// sluice runs); one naming a dead process (left by a crash) or holding garbage is replaced.
    pub fn create(path: &Path) -> Result<PidFile, String> {
        let shown = path.display();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(pid) = text.trim().parse::<i32>().ok().filter(|p| *p > 0)
                    && pid != std::process::id() as i32
                    && alive(pid)
                {
                    return Err(format!(
                        "pidfile {shown} names process {pid}, which is running; is another sluice \
                         running? (stop it, or remove the file if that process is not sluice)"
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove the stale pidfile {shown}: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read pidfile {shown}: {e}")),
        }
        // create_new: if another sluice wrote it since, fail rather than overwrite.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| format!("cannot create pidfile {shown}: {e}"))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| format!("cannot write pidfile {shown}: {e}"))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl PidFile {
    /// Writes this process's id to `path` whoever it names: an upgrade's new process takes the
    /// file over from the old one, which leaves it alone at exit (it is no longer its own).
    pub fn take_over(path: &Path) -> Result<PidFile, String> {
        let shown = path.display();
        let temp = path.with_extension("upgrade");
        std::fs::write(&temp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|e| format!("cannot take over pidfile {shown}: {e}"))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

/// Whether a process with this id exists (signal 0 checks without sending anything).
fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a file another process wrote meanwhile stays.
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
