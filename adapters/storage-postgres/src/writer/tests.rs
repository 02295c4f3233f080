use super::*;
use crate::scratch::ScratchDatabase;
use crate::tables::MAIN_STORE;
use metis_domain::events::{Actor, Sensitivity};

fn call(n: u64) -> Event {
    Event {
        id: format!("01J{n:023}"),
        timestamp_us: 1_000,
        session_id: "s".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: "llm.call_completed",
        actor: Actor::System,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: r#"{"gateway_key_id":"gk","cost_usd":1.0}"#.into(),
    }
}

fn setup() -> Result<(ScratchDatabase, Db), DbError> {
    let scratch = ScratchDatabase::from_env()?;
    let db = Db::new(scratch.config().clone())?;
    let pool = db.clone();
    db.block_on(async move {
        let mut c = pool.get().await?;
        for component in &MAIN_STORE {
            crate::schema::migrate(&mut c, component)
                .await
                .map_err(|e| DbError::Stopped(e.to_string()))?;
        }
        Ok(())
    })?;
    Ok((scratch, db))
}

fn stored(db: &Db) -> Result<i64, DbError> {
    let pool = db.clone();
    db.block_on(async move {
        let c = pool.get().await?;
        Ok(c.query_one("SELECT count(*) FROM events", &[])
            .await?
            .get(0))
    })
}

/// Write `events` in a transaction of its own connection; returns it with its id and
/// server process, committed or left open.
fn side_transaction(
    db: &Db,
    events: &[Event],
    commit: bool,
) -> Result<(Object, i64, i32), DbError> {
    let mut conn = db.block_here(db.get())??;
    let (xid, pid) = {
        let (tx, xid, pid) = block(db, begin(&mut conn))?;
        let chained = vec![None; events.len()];
        insert_bulk(db, &tx, events, &chained)?;
        if commit {
            block(db, tx.commit())?;
        } else {
            // Leave it running: `forget` keeps the driver from rolling it back.
            std::mem::forget(tx);
        }
        (xid, pid)
    };
    Ok((conn, xid, pid))
}

/// A batch whose COMMIT got no answer but did commit is counted as written on the retry,
/// not written again (without the check it would come back as three rejected duplicates).
#[test]
fn a_commit_in_doubt_that_landed_is_not_written_again() -> Result<(), DbError> {
    let (_scratch, db) = setup()?;
    let events = [call(1), call(2), call(3)];
    let (_conn, xid, pid) = side_transaction(&db, &events, true)?;
    let mut writer = PgBatches::new(db.clone(), Arc::new(WriterState::default()));
    let outcome = BatchOutcome::default();
    let mut in_doubt = Some(InDoubt { xid, pid, outcome });
    let out = writer.attempt(&events, &[], &mut in_doubt)?;
    assert_eq!(out, outcome);
    assert_eq!(stored(&db)?, 3);
    Ok(())
}

/// A batch whose transaction is still running on a lost connection is ended first (its
/// server process terminated), then written once.
#[test]
fn a_commit_in_doubt_still_running_is_ended_then_written_once() -> Result<(), DbError> {
    let (_scratch, db) = setup()?;
    let events = [call(1), call(2), call(3)];
    let (_conn, xid, pid) = side_transaction(&db, &events, false)?;
    let mut writer = PgBatches::new(db.clone(), Arc::new(WriterState::default()));
    let mut in_doubt = Some(InDoubt {
        xid,
        pid,
        outcome: BatchOutcome::default(),
    });
    let out = writer.attempt(&events, &[], &mut in_doubt)?;
    assert_eq!(out.rejected_events, 0, "{out:?}");
    assert_eq!(stored(&db)?, 3);
    Ok(())
}

/// An event whose id is already stored is refused alone; the rest of its batch is written.
#[test]
fn a_stored_id_is_refused_alone() -> Result<(), DbError> {
    let (_scratch, db) = setup()?;
    let mut writer = PgBatches::new(db.clone(), Arc::new(WriterState::default()));
    writer.attempt(&[call(1)], &[], &mut None)?;
    let out = writer.attempt(&[call(2), call(1), call(3), call(3)], &[], &mut None)?;
    assert_eq!(out.rejected_events, 2, "{out:?}");
    assert_eq!(stored(&db)?, 3);
    Ok(())
}
