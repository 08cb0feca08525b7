-- The RabbitMQ user whose answers are taken as this provider's (NULL: the
-- hubs' own user). A registry fact, so every hub reads the same binding and
-- a change to it is logged.
ALTER TABLE agencies ADD COLUMN broker_user TEXT;
