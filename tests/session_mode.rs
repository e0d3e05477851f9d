//! Session pooling: a client keeps its server until it leaves, and the next client gets it reset.

mod common;

use common::{connect, pg, start_sluice};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_session_keeps_its_server_and_the_next_client_gets_it_reset() {
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\npool_mode = \"session\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 1\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    let a = connect(addr, "sluice_trust", "", "app").await.unwrap();
    a.batch_execute("SET myapp.flag = 'from_a'").await.unwrap();
    let pid_a: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    // Session state survives between A's transactions: it is A's server.
    let flag: String = a
        .query_one("SELECT current_setting('myapp.flag')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(flag, "from_a");

    let b = connect(addr, "sluice_trust", "", "app").await.unwrap();
    let b_query = tokio::spawn(async move {
        let row = b
            .query_one(
                "SELECT pg_backend_pid(), coalesce(current_setting('myapp.flag', true), '')",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i32>(0), row.get::<_, String>(1))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b_query.is_finished(),
        "B got a server while A's session held the only one"
    );
    drop(a);
    let (pid_b, flag_b) = tokio::time::timeout(Duration::from_secs(10), b_query)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pid_b, pid_a, "B got A's server after A left");
    assert_eq!(
        flag_b, "",
        "server_reset_query (DISCARD ALL) cleared A's settings"
    );
}
