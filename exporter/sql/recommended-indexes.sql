-- Recommended indexes for tw-exporter (issue #6, "Performance at scale").
--
-- Each statement is safe on a live database: CONCURRENTLY does not block writes (it cannot
-- run inside a transaction block; run this file with `psql -f`, which autocommits), and
-- IF NOT EXISTS makes the file re-runnable. If a CONCURRENTLY build fails it leaves an
-- INVALID index: DROP INDEX CONCURRENTLY it and run the statement again.
-- `tw-exporter check` reports, from each query's plan, which of these a database lacks or does
-- not use, and why (exporter/ops/advice.py).
--
-- Schemas covered (docs/schema-variants.md): bigint or UUID ids, follower_count nullable or
-- NOT NULL, any database collation (libc C / C.UTF-8 and ICU tested), PostgreSQL 15 and 18;
-- tests/test_schema_variants.py checks on both that every query's plan uses these indexes.
-- No index is partial (PostgreSQL 17+ drops `col IS NOT NULL` on a NOT NULL column from the
-- query and then cannot use an index with that predicate), and a key that supplies an
-- ORDER BY ... COLLATE "C" is declared COLLATE "C" (an index in another collation, the
-- database's default included, cannot supply that order).
--
-- Timings: median per query at 10M tweets / 1.67M inside the 7-day window, PostgreSQL 15,
-- 2 vCPU, default settings (benchmarks/results/RESULTS.md has the full table). With all of
-- them a collection cycle takes ~0.8 s at 10M instead of 2.2 s (4.1 s with the seed's SQL).
-- Index-only scans rely on the visibility map: keep autovacuum frequent on tw_tweets.

-- platform_stats: index-only scan of the window instead of a scan of the whole table
-- (1.65 s -> 0.42 s at 10M). trending_hashtags finds the window's smallest tweet id with it
-- (1.61 s -> 0.99 s at 10M with this index alone). ~470 MB and 4.5 s to build at 10M tweets.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tw_tweets_created_at_cover_idx
    ON tw_tweets (created_at) INCLUDE (id, user_id, like_count);

-- trending_hashtags, "id-range" shape only (integer ids growing with time; UUID or unordered
-- ids get the "window-join" shape, which does not use it): reads (id, created_at) of the
-- window's tweets in id order without touching the table, so they merge-join with tw_tweet_hashtags' (tweet_id, hashtag_id)
-- primary key (0.99 s -> 0.79 s at 10M on top of the index above; the seed's query took
-- 3.0 s). ~300 MB and 4.2 s to build at 10M tweets.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tw_tweets_id_created_at_idx
    ON tw_tweets (id) INCLUDE (created_at);

-- top_users: the top N straight from the index in the query's exact order (count, then name
-- in byte order) instead of sorting every user (47 ms -> 0.5 ms at 500k users). Not partial:
-- NULL counts sit first in the DESC order and the query's IS NOT NULL skips them in the index.
-- Replaces the earlier tw_users_top_followers_idx `(follower_count DESC, username) WHERE
-- follower_count IS NOT NULL`: once this one is built, DROP INDEX CONCURRENTLY
-- tw_users_top_followers_idx. ~19 MB at 500k users.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tw_users_followers_rank_idx
    ON tw_users (follower_count DESC, username COLLATE "C");

-- trending_hashtags: the shipped schema's primary key of tw_tweet_hashtags is already this
-- index. Only if your link table has no primary key or index starting with
-- (tweet_id, hashtag_id), create it (without it the query scans and hashes the whole link
-- table on every cycle):
-- CREATE INDEX CONCURRENTLY IF NOT EXISTS tw_tweet_hashtags_tweet_id_hashtag_id_idx
--     ON tw_tweet_hashtags (tweet_id, hashtag_id);
