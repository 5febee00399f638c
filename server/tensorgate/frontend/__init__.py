"""The gRPC face of the server: decoding, checking and encoding; nothing below it sees protobuf."""
