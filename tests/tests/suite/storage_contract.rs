//! The storage contract suite, run against every backend: each clause (a function in
//! `metis_tests::contract`) is listed once in `main_contracts!`/`pattern_contracts!` (the
//! `KeyStore` ones in `key_contracts!`, the offline ones in `store_contracts!`,
//! `file_contracts!` and `server_contracts!`) and instantiated for the `sqlite`, `redb`,
//! `postgres` and `fake` modules, and the key clauses for `file_keystore` (the default JSON
//! key file), each test with a fresh backend in its own temp directory (and, for PostgreSQL,
//! its own database).

/// Clauses of the `KeyStore` port: every backend, and the JSON key file on its own.
macro_rules! key_contracts {
    ($m:ident) => {
        $m!(a_missing_key_store_is_not_found);
        $m!(insert_creates_the_store_and_load_keeps_insertion_order);
        $m!(insert_refuses_a_duplicate_id_or_hash);
        $m!(insert_refuses_an_invalid_record_and_writes_nothing);
        $m!(parallel_inserts_lose_no_key);
        $m!(update_applies_the_edit_and_returns_the_new_set);
        $m!(a_refused_edit_is_rejected_and_writes_nothing);
        $m!(an_invalid_edit_result_is_corrupt_and_writes_nothing);
        $m!(a_no_op_edit_writes_nothing);
        $m!(update_of_a_missing_store_is_not_found);
        $m!(parallel_revokes_through_update_lose_no_update);
        $m!(the_version_changes_with_every_write);
        $m!(a_damaged_key_store_is_corrupt_and_serves_nothing);
        $m!(a_read_only_key_store_refuses_writes_and_still_loads);
        $m!(expiry_is_stored_updated_and_validated);
        $m!(policies_of_a_missing_store_are_empty);
        $m!(policies_are_stored_beside_the_keys_and_move_the_version);
        $m!(a_refused_invalid_or_no_op_policy_edit_writes_nothing);
        $m!(parallel_policy_updates_lose_no_update);
        $m!(a_read_only_key_store_refuses_policy_writes);
    };
}

/// Every clause but the `PatternStore` ones.
macro_rules! main_contracts {
    ($m:ident) => {
        // EventSink
        $m!(a_full_queue_counts_overflow_and_never_blocks);
        $m!(flush_waits_for_every_earlier_event);
        $m!(flush_after_close_is_unavailable);
        $m!(emit_after_close_is_counted);
        $m!(is_writable_until_closed);
        $m!(written_events_survive_reopen_unchanged);
        $m!(a_rejected_event_fails_alone);
        $m!(opening_stamps_the_schema_version);
        $m!(a_newer_store_is_refused_and_never_lowered);
        $m!(audit_events_form_a_verifiable_chain);
        $m!(the_audit_chain_continues_across_reopen);
        $m!(a_writer_killed_mid_write_keeps_every_committed_row);
        $m!(concurrent_call_events_all_count_in_spend);
        // TraceQuery
        $m!(spend_sums_both_windows_of_call_events);
        $m!(usage_groups_a_half_open_window_by_cost);
        $m!(usage_puts_events_without_the_field_in_a_none_group);
        $m!(usage_filter_restricts_to_one_value);
        $m!(audit_events_are_a_half_open_window_ordered_by_id);
        $m!(audit_events_filter_by_type);
        key_contracts!($m);
        // SessionStore
        $m!(a_first_turn_creates_the_session);
        $m!(later_turns_accumulate);
        $m!(the_parent_link_is_kept_and_is_worker_is_sticky);
        $m!(a_turn_from_another_workspace_changes_nothing);
        $m!(turns_apply_in_record_order);
        $m!(concurrent_record_turn_keeps_every_turn_in_order);
        $m!(flush_applies_every_earlier_turn);
        $m!(an_unknown_session_is_none);
        $m!(list_orders_by_latest_update_then_id);
        $m!(children_are_direct_and_oldest_first);
        $m!(sessions_survive_reopen);
        $m!(record_turn_after_close_is_unavailable);
    };
}

/// Clauses of the `PatternStore` port.
macro_rules! pattern_contracts {
    ($m:ident) => {
        $m!(record_creates_a_fingerprint_and_an_outcome);
        $m!(a_known_signature_accumulates_on_its_outcome);
        $m!(scores_update_the_mean_by_welford);
        $m!(above_the_hard_cap_the_store_is_evicted_to_the_soft_cap);
        $m!(above_the_soft_cap_only_the_age_trim_runs);
        $m!(an_unusable_workspace_is_skipped);
        $m!(a_newer_pattern_store_is_refused);
        $m!(replace_all_equals_a_fresh_replay);
        $m!(record_many_equals_recording_one_by_one);
        $m!(reads_of_a_missing_store_are_empty_and_outcomes_are_ordered);
    };
}

macro_rules! all_contracts {
    ($m:ident) => {
        main_contracts!($m);
        pattern_contracts!($m);
    };
}

/// Clauses of the offline side of `StorageBackend` every stored backend meets (status,
/// retention, compaction, migrations, the read-only view).
macro_rules! store_contracts {
    ($m:ident) => {
        $m!(status_counts_events_audit_events_and_sessions);
        $m!(prune_deletes_old_non_audit_events_only);
        $m!(compaction_keeps_every_row);
        $m!(a_current_store_has_no_migration_steps);
        $m!(the_reader_pages_events_and_reads_sessions);
    };
}

/// Clauses of the offline side of `StorageBackend` (files to back up, restore, prune, copy):
/// the file backends only.
macro_rules! file_contracts {
    ($m:ident) => {
        store_contracts!($m);
        $m!(a_backend_recognizes_its_own_files_only);
        $m!(backup_then_restore_gives_the_same_store);
        $m!(maintenance_refuses_a_newer_store);
        $m!(a_copy_keeps_every_row_and_the_audit_chain);
    };
}

/// Clauses of a server engine's offline side (one database per backend: no file to
/// recognize, snapshots refused until a portable format exists).
macro_rules! server_contracts {
    ($m:ident) => {
        store_contracts!($m);
        $m!(a_server_engine_backs_up_to_a_portable_file_and_restores_it);
        $m!(a_newer_server_store_refuses_maintenance_untouched);
    };
}

macro_rules! case {
    ($fixture:path, $t:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $t() {
            metis_tests::contract::set_writer_bin(env!("CARGO_BIN_EXE_store-writer"));
            let backend = $fixture().await;
            metis_tests::contract::$t(&*backend).await;
        }
    };
}

mod sqlite {
    macro_rules! c {
        ($t:ident) => {
            case!(metis_tests::contract::fixtures::sqlite, $t);
        };
    }
    all_contracts!(c);
    file_contracts!(c);
}

mod redb {
    macro_rules! c {
        ($t:ident) => {
            case!(metis_tests::contract::fixtures::redb, $t);
        };
    }
    all_contracts!(c);
    file_contracts!(c);
}

/// PostgreSQL: every clause but the pattern ones (its pattern stores are not in this build),
/// each case on a fresh database of the server named by `METIS_TEST_DATABASE_URL` (unset:
/// every case fails saying how to start one).
mod postgres {
    macro_rules! c {
        ($t:ident) => {
            case!(metis_tests::contract::fixtures::postgres, $t);
        };
    }
    main_contracts!(c);
    server_contracts!(c);
}

mod fake {
    macro_rules! c {
        ($t:ident) => {
            case!(metis_tests::contract::fixtures::fake, $t);
        };
    }
    all_contracts!(c);
}

mod file_keystore {
    macro_rules! c {
        ($t:ident) => {
            case!(metis_tests::contract::fixtures::file_keystore, $t);
        };
    }
    key_contracts!(c);
}

/// `migrate-store` between every ordered pair of backends.
mod cross_backend {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_to_postgres_and_back() {
        let (a, b) = (
            metis_tests::contract::fixtures::sqlite().await,
            metis_tests::contract::fixtures::postgres().await,
        );
        metis_tests::contract::a_main_store_copy_to_another_backend_and_back_is_identical(&*a, &*b)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_to_postgres_and_back() {
        let (a, b) = (
            metis_tests::contract::fixtures::redb().await,
            metis_tests::contract::fixtures::postgres().await,
        );
        metis_tests::contract::a_main_store_copy_to_another_backend_and_back_is_identical(&*a, &*b)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_to_redb_and_back() {
        let (a, b) = (
            metis_tests::contract::fixtures::sqlite().await,
            metis_tests::contract::fixtures::redb().await,
        );
        metis_tests::contract::a_copy_to_another_backend_and_back_is_identical(&*a, &*b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_to_sqlite_and_back() {
        let (a, b) = (
            metis_tests::contract::fixtures::redb().await,
            metis_tests::contract::fixtures::sqlite().await,
        );
        metis_tests::contract::a_copy_to_another_backend_and_back_is_identical(&*a, &*b).await;
    }
}
