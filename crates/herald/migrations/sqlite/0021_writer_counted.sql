-- Issue 14: claims and outcomes count their own status changes, once per write instead of once per row.
-- The row trigger of 0002 cost about 10 µs of the writer's time per status change (two per delivered
-- message), most of it the UPDATE of the one status_counts row. A statement that counts what it changed
-- flips `writer_counted` in the rows it changes, and the trigger leaves those rows alone; every other change
-- of status (cancel, lease release, any other connection) is still counted by the trigger.
ALTER TABLE messages ADD COLUMN writer_counted INTEGER NOT NULL DEFAULT 0;

DROP TRIGGER messages_counted_update;
CREATE TRIGGER messages_counted_update AFTER UPDATE OF status ON messages
WHEN OLD.status IS NOT NEW.status AND NEW.writer_counted IS OLD.writer_counted BEGIN
    UPDATE status_counts SET
        scheduled = scheduled + (NEW.status = 'scheduled') - (OLD.status = 'scheduled'),
        queued = queued + (NEW.status = 'queued') - (OLD.status = 'queued'),
        sending = sending + (NEW.status = 'sending') - (OLD.status = 'sending'),
        deferred = deferred + (NEW.status = 'deferred') - (OLD.status = 'deferred'),
        delivered = delivered + (NEW.status = 'delivered') - (OLD.status = 'delivered'),
        failed = failed + (NEW.status = 'failed') - (OLD.status = 'failed'),
        cancelled = cancelled + (NEW.status = 'cancelled') - (OLD.status = 'cancelled')
    WHERE shard = 0;
    INSERT INTO activity (minute, shard, delivered, failed, deferred)
        SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) / 60000 * 60000, 0,
               NEW.status = 'delivered', NEW.status = 'failed', NEW.status = 'deferred'
        WHERE NEW.status IN ('delivered', 'failed', 'deferred')
        ON CONFLICT (minute, shard) DO UPDATE SET delivered = delivered + excluded.delivered,
            failed = failed + excluded.failed, deferred = deferred + excluded.deferred;
END;
