//! One builder for the pooler configs the tests start sluice with: `[pooler]` (listen_port 0,
//! the auth type, any lines the test adds), `[users.NAME]` tables, `[databases.NAME]` tables
//! pointing at the shared PostgreSQL (or another port), and any other tables at the end.
//!
//! ```ignore
//! let toml = PoolerToml::new("trust")
//!     .admin()
//!     .set("query_wait_timeout = \"20s\"")
//!     .user("sluice_trust")
//!     .database("app", Some(2))
//!     .build();
//! ```

use super::pg;

/// A config under construction; [`PoolerToml::build`] writes it out as TOML text.
#[derive(Debug, Clone)]
pub struct PoolerToml {
    listen_port: u16,
    auth_type: String,
    /// Lines of `[pooler]` after listen_port and auth_type, in the order given.
    pooler: Vec<String>,
    /// `[users.NAME]` tables, each with its lines.
    users: Vec<String>,
    /// `[databases.NAME]` tables, each with its lines.
    databases: Vec<String>,
    /// Raw TOML after every table above (e.g. `[metrics]`, or a table the test writes itself).
    tail: Vec<String>,
}

impl PoolerToml {
    /// `[pooler]` with `listen_port = 0` (an ephemeral port) and `auth_type`; nothing else.
    pub fn new(auth_type: &str) -> PoolerToml {
        PoolerToml {
            listen_port: 0,
            auth_type: auth_type.to_string(),
            pooler: Vec::new(),
            users: Vec::new(),
            databases: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// `auth_type = "trust"`.
    pub fn trust() -> PoolerToml {
        PoolerToml::new("trust")
    }

    /// Listens on `port` instead of an ephemeral one (for a sluice binary the test starts).
    pub fn listen_port(mut self, port: u16) -> PoolerToml {
        self.listen_port = port;
        self
    }

    /// Adds lines to `[pooler]` as written (`key = value`, several separated by newlines); an
    /// empty string adds nothing.
    pub fn set(mut self, lines: &str) -> PoolerToml {
        if !lines.trim().is_empty() {
            self.pooler.push(lines.to_string());
        }
        self
    }

    /// `admin_users = ["admin"]` (the table for `admin` is separate: [`PoolerToml::user`]).
    pub fn admin(self) -> PoolerToml {
        self.set("admin_users = [\"admin\"]")
    }

    /// `pool_mode = "<mode>"`.
    pub fn pool_mode(self, mode: &str) -> PoolerToml {
        self.set(&format!("pool_mode = \"{mode}\""))
    }

    /// A `[users.NAME]` table with no keys (a user sluice knows, for trust auth).
    pub fn user(mut self, name: &str) -> PoolerToml {
        self.users.push(format!("[users.{name}]\n"));
        self
    }

    /// A `[users.NAME]` table with its password.
    pub fn user_password(mut self, name: &str, password: &str) -> PoolerToml {
        self.users
            .push(format!("[users.{name}]\npassword = \"{password}\"\n"));
        self
    }

    /// `[databases.NAME]` on the shared PostgreSQL ([`pg`]), with `pool_size` when given.
    pub fn database(self, name: &str, pool_size: Option<u32>) -> PoolerToml {
        let port = pg().port();
        self.database_on(name, port, pool_size)
    }

    /// `[databases.NAME]` on the PostgreSQL at 127.0.0.1:`port`, with `pool_size` when given.
    pub fn database_on(mut self, name: &str, port: u16, pool_size: Option<u32>) -> PoolerToml {
        let mut table = format!("[databases.{name}]\nhost = \"127.0.0.1\"\nport = {port}\n");
        if let Some(size) = pool_size {
            table.push_str(&format!("pool_size = {size}\n"));
        }
        self.databases.push(table);
        self
    }

    /// Raw TOML written after every table (other tables, or keys of the last database).
    pub fn tail(mut self, text: &str) -> PoolerToml {
        if !text.trim().is_empty() {
            self.tail.push(text.to_string());
        }
        self
    }

    /// The config as TOML text.
    pub fn build(&self) -> String {
        let mut out = format!(
            "[pooler]\nlisten_port = {}\nauth_type = \"{}\"\n",
            self.listen_port, self.auth_type
        );
        for part in self
            .pooler
            .iter()
            .chain(&self.users)
            .chain(&self.databases)
            .chain(&self.tail)
        {
            out.push_str(part);
            if !part.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}
