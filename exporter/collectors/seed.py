"""The seed document's three statements, verbatim (``asyncpg-dashboard.txt``).

Not run by the exporter: they are the reference its own SQL is proven equal to
(``tests/test_query_equivalence.py``) and the baseline the benchmarks measure against.
"""

TOP_USERS = """
SELECT username, follower_count, verified
FROM tw_users
ORDER BY follower_count DESC
LIMIT $1
"""

TRENDING_HASHTAGS = """
SELECT h.tag, COUNT(*) AS tweet_count
FROM tw_hashtags h
JOIN tw_tweet_hashtags th ON th.hashtag_id = h.id
JOIN tw_tweets t ON t.id = th.tweet_id
WHERE t.created_at >= NOW() - ($1 || ' days')::INTERVAL
GROUP BY h.tag
ORDER BY tweet_count DESC
LIMIT 10
"""

PLATFORM_STATS = """
SELECT
COUNT(*) AS total_tweets,
COUNT(DISTINCT user_id) AS active_users,
SUM(like_count) AS total_likes,
AVG(like_count) AS avg_likes
FROM tw_tweets
WHERE created_at >= NOW() - INTERVAL '7 days'
"""

TRENDING_LIMIT = 10  # hard-coded in the seed
STATS_DAYS = 7  # hard-coded in the seed
