//! NATS: the bundled server and the client connection.
