//! The Kubernetes actuator against the stateful fake API server.
