//! The admission contract (`metis_tests::contract::admission`), run against every
//! implementation of `SpendAdmission` and `KeyRateLimiter`: the in-process ones of a single
//! node and the shared-store fakes. Each clause is listed once; a store shared by replicas
//! adds a module here and runs `spend_contracts!`, `shared_spend_contracts!` and
//! `limit_contracts!`.

/// Clauses every `SpendAdmission` meets.
macro_rules! spend_contracts {
    ($m:ident) => {
        $m!(concurrent_reservations_overshoot_a_cap_by_at_most_one_request);
        $m!(concurrent_reservations_across_keys_overshoot_a_shared_cap_by_at_most_one_request);
        $m!(a_refused_reservation_and_a_check_hold_nothing);
        $m!(a_settlement_replaces_the_reservation_by_the_cost);
        $m!(windows_roll_over_in_utc_as_the_domain_says);
        $m!(alerts_are_raised_once_per_window_across_handles);
    };
}

/// Clauses of a `SpendAdmission` shared by processes.
macro_rules! shared_spend_contracts {
    ($m:ident) => {
        $m!(shared_a_repeated_settlement_changes_nothing);
    };
}

/// Clauses every `KeyRateLimiter` meets.
macro_rules! limit_contracts {
    ($m:ident) => {
        $m!(a_bucket_admits_rpm_then_denies_with_retry_after);
        $m!(a_key_s_bucket_is_one_across_handles);
        $m!(buckets_are_per_token);
    };
}

macro_rules! case {
    ($fixture:path, $t:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $t() {
            let backend = $fixture();
            metis_tests::contract::admission::$t(&*backend).await;
        }
    };
}

mod in_process {
    macro_rules! spend {
        ($t:ident) => {
            case!(metis_tests::contract::admission::in_process_spend, $t);
        };
    }
    macro_rules! limits {
        ($t:ident) => {
            case!(metis_tests::contract::admission::in_process_limits, $t);
        };
    }
    spend_contracts!(spend);
    limit_contracts!(limits);
}

mod fake {
    macro_rules! spend {
        ($t:ident) => {
            case!(metis_tests::contract::admission::fake_spend, $t);
        };
    }
    macro_rules! limits {
        ($t:ident) => {
            case!(metis_tests::contract::admission::fake_limits, $t);
        };
    }
    spend_contracts!(spend);
    shared_spend_contracts!(spend);
    limit_contracts!(limits);
}

mod postgres {
    macro_rules! spend {
        ($t:ident) => {
            case!(metis_tests::contract::admission::postgres_spend, $t);
        };
    }
    macro_rules! limits {
        ($t:ident) => {
            case!(metis_tests::contract::admission::postgres_limits, $t);
        };
    }
    spend_contracts!(spend);
    shared_spend_contracts!(spend);
    limit_contracts!(limits);
}
