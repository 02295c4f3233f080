//! The token-limit contract (`metis_tests::contract::token_limits`), run against the
//! in-process buckets and PostgreSQL (two pools on one database: two replicas).

macro_rules! token_contracts {
    ($m:ident) => {
        $m!(a_take_is_all_or_none_and_names_the_refusing_bucket);
        $m!(an_estimate_above_the_capacity_passes_once_on_a_full_bucket);
        $m!(settlement_refunds_and_charges_the_difference);
        $m!(a_bucket_is_one_across_handles);
    };
}

macro_rules! case {
    ($fixture:path, $t:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $t() {
            let backend = $fixture();
            metis_tests::contract::token_limits::$t(&*backend).await;
        }
    };
}

mod in_process {
    macro_rules! tokens {
        ($t:ident) => {
            case!(metis_tests::contract::token_limits::in_process_tokens, $t);
        };
    }
    token_contracts!(tokens);
}

mod postgres {
    macro_rules! tokens {
        ($t:ident) => {
            case!(metis_tests::contract::token_limits::postgres_tokens, $t);
        };
    }
    token_contracts!(tokens);
}
