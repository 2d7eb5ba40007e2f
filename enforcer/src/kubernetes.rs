//! The Kubernetes actuator (implements `cluster::ClusterActuator`) on `kube::Client`.
