-- Claims in a row that took a migration over from an expired lease: its step started and
-- never recorded a result (the worker died, lost its database, or could not write). A claim
-- of a released row sets it back to 0. The worker fails a migration taken over
-- MAX_STEP_ATTEMPTS times in a row instead of running its step forever (each run may repeat
-- upstream calls). Forward-only; never edit after merge.
ALTER TABLE migrations ADD COLUMN rescues integer NOT NULL DEFAULT 0;
