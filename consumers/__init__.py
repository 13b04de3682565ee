"""RabbitMQ consumers and the outbox relay: they pass message bodies to SQL functions."""
