//! Closed label-value enums of the controller's metrics.

use crate::label_enum::label_enum;

label_enum! {
    /// The `phase` label of pod startup durations (definitions in docs/metrics.md).
    Phase {
        /// POST sent to POST response.
        Create => "create",
        /// Created to `spec.nodeName` first seen.
        CreateToSchedule => "create_to_schedule",
        /// Scheduled to `PodReadyToStartContainers=True` first seen.
        ScheduleToSandbox => "schedule_to_sandbox",
        /// Scheduled to all containers started first seen.
        ScheduleToRun => "schedule_to_run",
        /// Created to all containers started first seen: the SLI.
        PodStartup => "pod_startup",
        /// All containers started to `Ready=True` first seen.
        StartedToReady => "started_to_ready",
        /// DELETE sent to the DELETED watch event.
        Delete => "delete",
    }
}

label_enum! {
    /// The `outcome` label of pod startup probes.
    Outcome {
        /// Started and Ready, no image pull: phases observed.
        Ok => "ok",
        /// The kubelet pulled an image: excluded from the SLI.
        ImagePulled => "image_pulled",
        /// The scheduler reported the pod unschedulable.
        Unschedulable => "unschedulable",
        /// Not started and Ready within the probe timeout.
        Timeout => "timeout",
        /// The POST failed.
        CreateError => "create_error",
        /// The pod failed (phase Failed, a container terminated, or an image error).
        Failed => "failed",
        /// An admission webhook changed the containers: not the SLI's pod.
        Mutated => "mutated",
        /// The watch broke during the probe, so first sightings are unknown.
        WatchRestarted => "watch_restarted",
    }
}

label_enum! {
    /// The `verb` label, as the apiserver names verbs.
    Verb {
        /// Single-object read.
        Get => "GET",
        /// Collection read.
        List => "LIST",
        /// Create.
        Post => "POST",
        /// Replace.
        Put => "PUT",
        /// Merge patch.
        Patch => "PATCH",
        /// Delete.
        Delete => "DELETE",
        /// Watch establishment (time to response headers).
        Watch => "WATCH",
    }
}

label_enum! {
    /// The `scope` label, computed as the apiserver's `CleanScope`.
    Scope {
        /// A named object, or any create.
        Resource => "resource",
        /// A collection in one namespace.
        Namespace => "namespace",
        /// A cluster-wide collection.
        Cluster => "cluster",
    }
}

label_enum! {
    /// The `code` label: HTTP status class, or `error` without a response.
    CodeClass {
        /// 1xx, 2xx and 3xx.
        Ok2xx => "2xx",
        /// 4xx.
        Client4xx => "4xx",
        /// 5xx.
        Server5xx => "5xx",
        /// No HTTP response (connect, timeout, body read).
        Error => "error",
    }
}

label_enum! {
    /// The `resource` label of apiserver samples.
    Resource {
        /// Probe pods.
        Pods => "pods",
        /// The sampler's ConfigMap.
        ConfigMaps => "configmaps",
        /// The cluster-scope LIST probe.
        Namespaces => "namespaces",
    }
}

label_enum! {
    /// The `event` label of write-to-watch-event latency.
    WatchEvent {
        /// ADDED after POST.
        Added => "added",
        /// MODIFIED after PUT or PATCH.
        Modified => "modified",
        /// DELETED after DELETE.
        Deleted => "deleted",
    }
}

label_enum! {
    /// The `reason` label of swept probe objects.
    SweepReason {
        /// Created by an earlier controller run.
        EarlierRun => "earlier_run",
        /// Older than the probe timeout.
        Expired => "expired",
    }
}

label_enum! {
    /// The `component` label of control-plane leader changes.
    Component {
        /// kube-controller-manager.
        ControllerManager => "kube-controller-manager",
        /// kube-scheduler.
        Scheduler => "kube-scheduler",
    }
}

label_enum! {
    /// The `watch` label of watch restarts.
    WatchName {
        /// Nodes.
        Nodes => "nodes",
        /// Leases in kube-node-lease.
        NodeLeases => "node_leases",
        /// Leases in kube-system.
        ControlPlaneLeases => "control_plane_leases",
        /// The sampler's long-lived ConfigMap watch.
        Sampler => "sampler",
    }
}

impl Component {
    /// The component whose Lease in kube-system is named `name`.
    pub fn from_lease(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }
}
