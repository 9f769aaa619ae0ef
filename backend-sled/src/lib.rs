//! Embedded, durable keyloop coordinator on sled.
