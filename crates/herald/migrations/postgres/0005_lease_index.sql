-- Recording an outcome updates `WHERE id = $1 AND lease_owner = $2`. With planner statistics taken while
-- the table was small (an ANALYZE at start, or by Herald's own upkeep on a young database), lease_owner was
-- all NULL in the sample, so `lease_owner = $2` looked as selective as the primary key and the planner
-- picked the smaller partial index on lease_owner alone: every record then scanned all of the node's
-- leased rows (and their dead versions) to find one. Captured with EXPLAIN (ANALYZE, BUFFERS) on 900 leased
-- rows: "Index Scan using messages_lease ... Rows Removed by Filter: 899" against 1 row with no statistics.
-- With id in the index both quals are index conditions, so whichever index the planner picks, it reads the
-- one row; a lookup by owner alone (releasing a node's leases) still uses the leading column.
DROP INDEX IF EXISTS messages_lease;
CREATE INDEX messages_lease ON messages (lease_owner, id) WHERE lease_owner IS NOT NULL;
