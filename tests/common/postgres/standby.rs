//! A streaming standby of a TempPostgres: `pg_basebackup -R` into a second temp dir, started on a
//! second free port (as the `postgres` OS user when root), and promoted with `pg_ctl promote`.

use super::{TempPostgres, output_text};
use std::sync::Mutex;

impl TempPostgres {
    /// Builds and starts a streaming standby of this server (which must be running). The standby
    /// has the same roles and databases; it is read-only until [`TempPostgres::promote`].
    pub fn start_standby(&self) -> TempPostgres {
        let (dir, watchdog, stdin) =
            super::data_dir_with_watchdog("sluice-pg-standby-", self.as_postgres_user);
        let mut standby = TempPostgres {
            bindir: self.bindir.clone(),
            dir: dir.clone(),
            port: 0,
            as_postgres_user: self.as_postgres_user,
            watchdog: Mutex::new(Some((watchdog, stdin))),
        };
        let data = standby.data_dir();
        let port = self.port.to_string();
        let out = standby.run_server_binary(
            "pg_basebackup",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-R".as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "--no-sync".as_ref(),
                "-h".as_ref(),
                self.dir.as_os_str(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                super::SUPERUSER.as_ref(),
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup failed:\n{}",
            output_text(&out)
        );
        // The copied configuration names the primary's socket directory: the standby uses its own.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open the standby's postgresql.conf");
        std::io::Write::write_all(
            &mut file,
            format!(
                "\nunix_socket_directories = '{}'\nhot_standby = on\n",
                dir.display()
            )
            .as_bytes(),
        )
        .expect("write the standby's postgresql.conf");
        standby.start_on_a_free_port();
        standby
    }

    /// `pg_ctl promote -w`: the standby leaves recovery and takes writes.
    pub fn promote(&self) {
        let data = self.data_dir();
        let out = self.run_server_binary(
            "pg_ctl",
            &[
                "promote".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl promote failed:\n{}",
            output_text(&out)
        );
    }
}
