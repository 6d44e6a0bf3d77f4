"""The typed shape of every kind podnet serves: which fields exist and what JSON type each has.

What belongs here: the schema of each kind (transcribed from the 1.32 Go types in k8s.io/api
and apimachinery), `check_types` (refuse a body whose values do not fit their Go types, the
way upstream's JSON decoder does, before any other code reads a field) and the walks behind
`fieldValidation` (`unknown_fields`, `drop_unknown_fields`). Value rules (names, enums,
cross-field checks) are `validation`'s; this module only knows shapes.

Why a schema and not `isinstance` at each use: upstream decodes every body into Go structs, so
by the time a registry strategy or a validator runs, `spec.replicas` *is* an int32. Checking
the whole object against the schema once, at the door, gives podnet the same guarantee:
strategies, defaulting, controllers and kubelets can index what the schema promises. The
same nodes carry Go type names, so they can later be rendered as OpenAPI (`kubectl explain`).

Invariants:
- After `check_types(kind, obj)` succeeds, every field the schema knows has its declared type:
  int32/int64 within their ranges, strings, booleans, RFC 3339 times, objects, lists, maps.
  `null` is accepted wherever Go accepts it (everywhere) and normalised as Go would re-encode
  it: a null field is dropped, a null list item or map value becomes the zero value.
- The first mismatch is reported like Go's decoder: `json: cannot unmarshal number
  2147483648 into Go struct field DeploymentSpec.spec.replicas of type int32` (400).
- `Struct(go, None)` is an object whose contents are not transcribed (rarely used sources,
  affinity, ...): it must be an object, its fields are neither checked nor reported unknown.
  `RAW` is any JSON (RawExtension, FieldsV1).
- Kinds without a schema are not checked here (validation stays total for them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podnet.api.errors import ApiError

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

# --- schema nodes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scalar:
    go: str  # "string", "int32", "int64", "bool", "intstr.IntOrString", "v1.Time", ...
    kind: str  # string | int | bool | intstr | quantity | time


@dataclass(frozen=True, slots=True)
class Struct:
    go: str  # "v1.PodSpec"
    fields: Mapping[str, Schema] | None  # None: an object whose contents are not transcribed


@dataclass(frozen=True, slots=True)
class Array:
    item: Schema

    @property
    def go(self) -> str:
        return "[]" + self.item.go


@dataclass(frozen=True, slots=True)
class Map:
    value: Schema

    @property
    def go(self) -> str:
        return "map[string]" + self.value.go


@dataclass(frozen=True, slots=True)
class Raw:
    go: str  # any JSON value: runtime.RawExtension, v1.FieldsV1


Schema = Scalar | Struct | Array | Map | Raw

STRING = Scalar("string", "string")
INT_32 = Scalar("int32", "int32")
INT_64 = Scalar("int64", "int64")
BOOL = Scalar("bool", "bool")
INT_OR_STRING = Scalar("intstr.IntOrString", "intstr")
QUANTITY = Scalar("resource.Quantity", "quantity")
TIME = Scalar("v1.Time", "time")
MICRO_TIME = Scalar("v1.MicroTime", "time")
BYTES = Scalar("[]uint8", "string")  # base64 text; its alphabet is validation's concern
RAW = Raw("runtime.RawExtension")

STRINGS = Array(STRING)
STRING_MAP = Map(STRING)
QUANTITIES = Map(QUANTITY)


def struct(go: str, **fields: Schema) -> Struct:
    return Struct(go, fields)


def opaque(go: str) -> Struct:
    return Struct(go, None)


def array_of(go: str, **fields: Schema) -> Array:
    return Array(Struct(go, fields))


# --- apimachinery --------------------------------------------------------------------------

OWNER_REFERENCE = struct(
    "v1.OwnerReference",
    apiVersion=STRING,
    kind=STRING,
    name=STRING,
    uid=STRING,
    controller=BOOL,
    blockOwnerDeletion=BOOL,
)
OBJECT_META = struct(
    "v1.ObjectMeta",
    name=STRING,
    generateName=STRING,
    namespace=STRING,
    selfLink=STRING,
    uid=STRING,
    resourceVersion=STRING,
    generation=INT_64,
    creationTimestamp=TIME,
    deletionTimestamp=TIME,
    deletionGracePeriodSeconds=INT_64,
    labels=STRING_MAP,
    annotations=STRING_MAP,
    ownerReferences=Array(OWNER_REFERENCE),
    finalizers=STRINGS,
    managedFields=array_of(
        "v1.ManagedFieldsEntry",
        manager=STRING,
        operation=STRING,
        apiVersion=STRING,
        time=TIME,
        fieldsType=STRING,
        fieldsV1=Raw("v1.FieldsV1"),
        subresource=STRING,
    ),
)
LABEL_SELECTOR = struct(
    "v1.LabelSelector",
    matchLabels=STRING_MAP,
    matchExpressions=array_of(
        "v1.LabelSelectorRequirement", key=STRING, operator=STRING, values=STRINGS
    ),
)
CONDITION = struct(
    "v1.Condition",
    type=STRING,
    status=STRING,
    observedGeneration=INT_64,
    lastTransitionTime=TIME,
    reason=STRING,
    message=STRING,
)
OBJECT_REFERENCE = struct(
    "v1.ObjectReference",
    kind=STRING,
    namespace=STRING,
    name=STRING,
    uid=STRING,
    apiVersion=STRING,
    resourceVersion=STRING,
    fieldPath=STRING,
)
LOCAL_REFERENCE = struct("v1.LocalObjectReference", name=STRING)


def _kind(go: str, **fields: Schema) -> Struct:
    return struct(go, apiVersion=STRING, kind=STRING, metadata=OBJECT_META, **fields)


# --- core/v1 pieces ------------------------------------------------------------------------

RESOURCE_REQUIREMENTS = struct(
    "v1.ResourceRequirements",
    limits=QUANTITIES,
    requests=QUANTITIES,
    claims=array_of("v1.ResourceClaim", name=STRING, request=STRING),
)
EXEC_ACTION = struct("v1.ExecAction", command=STRINGS)
HTTP_GET_ACTION = struct(
    "v1.HTTPGetAction",
    path=STRING,
    port=INT_OR_STRING,
    host=STRING,
    scheme=STRING,
    httpHeaders=array_of("v1.HTTPHeader", name=STRING, value=STRING),
)
TCP_SOCKET_ACTION = struct("v1.TCPSocketAction", port=INT_OR_STRING, host=STRING)
PROBE = struct(
    "v1.Probe",
    exec=EXEC_ACTION,
    httpGet=HTTP_GET_ACTION,
    tcpSocket=TCP_SOCKET_ACTION,
    grpc=struct("v1.GRPCAction", port=INT_32, service=STRING),
    initialDelaySeconds=INT_32,
    timeoutSeconds=INT_32,
    periodSeconds=INT_32,
    successThreshold=INT_32,
    failureThreshold=INT_32,
    terminationGracePeriodSeconds=INT_64,
)
LIFECYCLE_HANDLER = struct(
    "v1.LifecycleHandler",
    exec=EXEC_ACTION,
    httpGet=HTTP_GET_ACTION,
    tcpSocket=TCP_SOCKET_ACTION,
    sleep=struct("v1.SleepAction", seconds=INT_64),
)
SE_LINUX_OPTIONS = struct("v1.SELinuxOptions", user=STRING, role=STRING, type=STRING, level=STRING)
WINDOWS_OPTIONS = struct(
    "v1.WindowsSecurityContextOptions",
    gmsaCredentialSpecName=STRING,
    gmsaCredentialSpec=STRING,
    runAsUserName=STRING,
    hostProcess=BOOL,
)
SECCOMP_PROFILE = struct("v1.SeccompProfile", type=STRING, localhostProfile=STRING)
APP_ARMOR_PROFILE = struct("v1.AppArmorProfile", type=STRING, localhostProfile=STRING)
SECURITY_CONTEXT = struct(
    "v1.SecurityContext",
    capabilities=struct("v1.Capabilities", add=STRINGS, drop=STRINGS),
    privileged=BOOL,
    seLinuxOptions=SE_LINUX_OPTIONS,
    windowsOptions=WINDOWS_OPTIONS,
    runAsUser=INT_64,
    runAsGroup=INT_64,
    runAsNonRoot=BOOL,
    readOnlyRootFilesystem=BOOL,
    allowPrivilegeEscalation=BOOL,
    procMount=STRING,
    seccompProfile=SECCOMP_PROFILE,
    appArmorProfile=APP_ARMOR_PROFILE,
)
POD_SECURITY_CONTEXT = struct(
    "v1.PodSecurityContext",
    seLinuxOptions=SE_LINUX_OPTIONS,
    windowsOptions=WINDOWS_OPTIONS,
    runAsUser=INT_64,
    runAsGroup=INT_64,
    runAsNonRoot=BOOL,
    supplementalGroups=Array(INT_64),
    supplementalGroupsPolicy=STRING,
    fsGroup=INT_64,
    sysctls=array_of("v1.Sysctl", name=STRING, value=STRING),
    fsGroupChangePolicy=STRING,
    seccompProfile=SECCOMP_PROFILE,
    appArmorProfile=APP_ARMOR_PROFILE,
    seLinuxChangePolicy=STRING,
)
OBJECT_FIELD_SELECTOR = struct("v1.ObjectFieldSelector", apiVersion=STRING, fieldPath=STRING)
RESOURCE_FIELD_SELECTOR = struct(
    "v1.ResourceFieldSelector", containerName=STRING, resource=STRING, divisor=QUANTITY
)
KEY_SELECTOR = {"name": STRING, "key": STRING, "optional": BOOL}
ENV_VAR = struct(
    "v1.EnvVar",
    name=STRING,
    value=STRING,
    valueFrom=struct(
        "v1.EnvVarSource",
        fieldRef=OBJECT_FIELD_SELECTOR,
        resourceFieldRef=RESOURCE_FIELD_SELECTOR,
        configMapKeyRef=Struct("v1.ConfigMapKeySelector", KEY_SELECTOR),
        secretKeyRef=Struct("v1.SecretKeySelector", KEY_SELECTOR),
    ),
)
CONTAINER_FIELDS: dict[str, Schema] = {
    "name": STRING,
    "image": STRING,
    "command": STRINGS,
    "args": STRINGS,
    "workingDir": STRING,
    "ports": array_of(
        "v1.ContainerPort",
        name=STRING,
        hostPort=INT_32,
        containerPort=INT_32,
        protocol=STRING,
        hostIP=STRING,
    ),
    "envFrom": array_of(
        "v1.EnvFromSource",
        prefix=STRING,
        configMapRef=struct("v1.ConfigMapEnvSource", name=STRING, optional=BOOL),
        secretRef=struct("v1.SecretEnvSource", name=STRING, optional=BOOL),
    ),
    "env": Array(ENV_VAR),
    "resources": RESOURCE_REQUIREMENTS,
    "resizePolicy": array_of("v1.ContainerResizePolicy", resourceName=STRING, restartPolicy=STRING),
    "restartPolicy": STRING,
    "volumeMounts": array_of(
        "v1.VolumeMount",
        name=STRING,
        readOnly=BOOL,
        recursiveReadOnly=STRING,
        mountPath=STRING,
        subPath=STRING,
        mountPropagation=STRING,
        subPathExpr=STRING,
    ),
    "volumeDevices": array_of("v1.VolumeDevice", name=STRING, devicePath=STRING),
    "livenessProbe": PROBE,
    "readinessProbe": PROBE,
    "startupProbe": PROBE,
    "lifecycle": struct(
        "v1.Lifecycle", postStart=LIFECYCLE_HANDLER, preStop=LIFECYCLE_HANDLER, stopSignal=STRING
    ),
    "terminationMessagePath": STRING,
    "terminationMessagePolicy": STRING,
    "imagePullPolicy": STRING,
    "securityContext": SECURITY_CONTEXT,
    "stdin": BOOL,
    "stdinOnce": BOOL,
    "tty": BOOL,
}
CONTAINER = Struct("v1.Container", CONTAINER_FIELDS)
KEY_TO_PATH = array_of("v1.KeyToPath", key=STRING, path=STRING, mode=INT_32)
VOLUME = struct(
    "v1.Volume",
    name=STRING,
    hostPath=struct("v1.HostPathVolumeSource", path=STRING, type=STRING),
    emptyDir=struct("v1.EmptyDirVolumeSource", medium=STRING, sizeLimit=QUANTITY),
    secret=struct(
        "v1.SecretVolumeSource",
        secretName=STRING,
        items=KEY_TO_PATH,
        defaultMode=INT_32,
        optional=BOOL,
    ),
    configMap=struct(
        "v1.ConfigMapVolumeSource",
        name=STRING,
        items=KEY_TO_PATH,
        defaultMode=INT_32,
        optional=BOOL,
    ),
    persistentVolumeClaim=struct(
        "v1.PersistentVolumeClaimVolumeSource", claimName=STRING, readOnly=BOOL
    ),
    downwardAPI=struct(
        "v1.DownwardAPIVolumeSource",
        items=array_of(
            "v1.DownwardAPIVolumeFile",
            path=STRING,
            fieldRef=OBJECT_FIELD_SELECTOR,
            resourceFieldRef=RESOURCE_FIELD_SELECTOR,
            mode=INT_32,
        ),
        defaultMode=INT_32,
    ),
    projected=struct(
        "v1.ProjectedVolumeSource",
        sources=Array(opaque("v1.VolumeProjection")),
        defaultMode=INT_32,
    ),
    nfs=struct("v1.NFSVolumeSource", server=STRING, path=STRING, readOnly=BOOL),
    image=struct("v1.ImageVolumeSource", reference=STRING, pullPolicy=STRING),
    # sources podnet does not implement: known (never "unknown field"), contents unchecked
    **{
        name: opaque(go)
        for name, go in (
            ("gcePersistentDisk", "v1.GCEPersistentDiskVolumeSource"),
            ("awsElasticBlockStore", "v1.AWSElasticBlockStoreVolumeSource"),
            ("gitRepo", "v1.GitRepoVolumeSource"),
            ("iscsi", "v1.ISCSIVolumeSource"),
            ("glusterfs", "v1.GlusterfsVolumeSource"),
            ("rbd", "v1.RBDVolumeSource"),
            ("flexVolume", "v1.FlexVolumeSource"),
            ("cinder", "v1.CinderVolumeSource"),
            ("cephfs", "v1.CephFSVolumeSource"),
            ("flocker", "v1.FlockerVolumeSource"),
            ("fc", "v1.FCVolumeSource"),
            ("azureFile", "v1.AzureFileVolumeSource"),
            ("vsphereVolume", "v1.VsphereVirtualDiskVolumeSource"),
            ("quobyte", "v1.QuobyteVolumeSource"),
            ("azureDisk", "v1.AzureDiskVolumeSource"),
            ("photonPersistentDisk", "v1.PhotonPersistentDiskVolumeSource"),
            ("portworxVolume", "v1.PortworxVolumeSource"),
            ("scaleIO", "v1.ScaleIOVolumeSource"),
            ("storageos", "v1.StorageOSVolumeSource"),
            ("csi", "v1.CSIVolumeSource"),
            ("ephemeral", "v1.EphemeralVolumeSource"),
        )
    },
)
TOLERATION = struct(
    "v1.Toleration",
    key=STRING,
    operator=STRING,
    value=STRING,
    effect=STRING,
    tolerationSeconds=INT_64,
)
POD_SPEC = struct(
    "v1.PodSpec",
    volumes=Array(VOLUME),
    initContainers=Array(CONTAINER),
    containers=Array(CONTAINER),
    ephemeralContainers=Array(opaque("v1.EphemeralContainer")),
    restartPolicy=STRING,
    terminationGracePeriodSeconds=INT_64,
    activeDeadlineSeconds=INT_64,
    dnsPolicy=STRING,
    nodeSelector=STRING_MAP,
    serviceAccountName=STRING,
    serviceAccount=STRING,
    automountServiceAccountToken=BOOL,
    nodeName=STRING,
    hostNetwork=BOOL,
    hostPID=BOOL,
    hostIPC=BOOL,
    shareProcessNamespace=BOOL,
    securityContext=POD_SECURITY_CONTEXT,
    imagePullSecrets=Array(LOCAL_REFERENCE),
    hostname=STRING,
    subdomain=STRING,
    affinity=opaque("v1.Affinity"),
    schedulerName=STRING,
    tolerations=Array(TOLERATION),
    hostAliases=array_of("v1.HostAlias", ip=STRING, hostnames=STRINGS),
    priorityClassName=STRING,
    priority=INT_32,
    dnsConfig=struct(
        "v1.PodDNSConfig",
        nameservers=STRINGS,
        searches=STRINGS,
        options=array_of("v1.PodDNSConfigOption", name=STRING, value=STRING),
    ),
    readinessGates=array_of("v1.PodReadinessGate", conditionType=STRING),
    runtimeClassName=STRING,
    enableServiceLinks=BOOL,
    preemptionPolicy=STRING,
    overhead=QUANTITIES,
    topologySpreadConstraints=Array(opaque("v1.TopologySpreadConstraint")),
    setHostnameAsFQDN=BOOL,
    os=struct("v1.PodOS", name=STRING),
    hostUsers=BOOL,
    schedulingGates=array_of("v1.PodSchedulingGate", name=STRING),
    resourceClaims=Array(opaque("v1.PodResourceClaim")),
    resources=RESOURCE_REQUIREMENTS,
)
CONTAINER_STATE = struct(
    "v1.ContainerState",
    waiting=struct("v1.ContainerStateWaiting", reason=STRING, message=STRING),
    running=struct("v1.ContainerStateRunning", startedAt=TIME),
    terminated=struct(
        "v1.ContainerStateTerminated",
        exitCode=INT_32,
        signal=INT_32,
        reason=STRING,
        message=STRING,
        startedAt=TIME,
        finishedAt=TIME,
        containerID=STRING,
    ),
)
CONTAINER_STATUS = struct(
    "v1.ContainerStatus",
    name=STRING,
    state=CONTAINER_STATE,
    lastState=CONTAINER_STATE,
    ready=BOOL,
    restartCount=INT_32,
    image=STRING,
    imageID=STRING,
    containerID=STRING,
    started=BOOL,
    allocatedResources=QUANTITIES,
    resources=RESOURCE_REQUIREMENTS,
    volumeMounts=array_of(
        "v1.VolumeMountStatus",
        name=STRING,
        mountPath=STRING,
        readOnly=BOOL,
        recursiveReadOnly=STRING,
    ),
    user=opaque("v1.ContainerUser"),
    allocatedResourcesStatus=Array(opaque("v1.ResourceStatus")),
)
POD_STATUS = struct(
    "v1.PodStatus",
    observedGeneration=INT_64,
    phase=STRING,
    conditions=array_of(
        "v1.PodCondition",
        observedGeneration=INT_64,
        type=STRING,
        status=STRING,
        lastProbeTime=TIME,
        lastTransitionTime=TIME,
        reason=STRING,
        message=STRING,
    ),
    message=STRING,
    reason=STRING,
    nominatedNodeName=STRING,
    hostIP=STRING,
    hostIPs=array_of("v1.HostIP", ip=STRING),
    podIP=STRING,
    podIPs=array_of("v1.PodIP", ip=STRING),
    startTime=TIME,
    initContainerStatuses=Array(CONTAINER_STATUS),
    containerStatuses=Array(CONTAINER_STATUS),
    qosClass=STRING,
    ephemeralContainerStatuses=Array(CONTAINER_STATUS),
    resize=STRING,
    resourceClaimStatuses=Array(opaque("v1.PodResourceClaimStatus")),
)
POD_TEMPLATE_SPEC = struct("v1.PodTemplateSpec", metadata=OBJECT_META, spec=POD_SPEC)

SERVICE_SPEC = struct(
    "v1.ServiceSpec",
    ports=array_of(
        "v1.ServicePort",
        name=STRING,
        protocol=STRING,
        appProtocol=STRING,
        port=INT_32,
        targetPort=INT_OR_STRING,
        nodePort=INT_32,
    ),
    selector=STRING_MAP,
    clusterIP=STRING,
    clusterIPs=STRINGS,
    type=STRING,
    externalIPs=STRINGS,
    sessionAffinity=STRING,
    loadBalancerIP=STRING,
    loadBalancerSourceRanges=STRINGS,
    externalName=STRING,
    externalTrafficPolicy=STRING,
    healthCheckNodePort=INT_32,
    publishNotReadyAddresses=BOOL,
    sessionAffinityConfig=struct(
        "v1.SessionAffinityConfig",
        clientIP=struct("v1.ClientIPConfig", timeoutSeconds=INT_32),
    ),
    ipFamilies=STRINGS,
    ipFamilyPolicy=STRING,
    allocateLoadBalancerNodePorts=BOOL,
    loadBalancerClass=STRING,
    internalTrafficPolicy=STRING,
    trafficDistribution=STRING,
)
SERVICE_STATUS = struct(
    "v1.ServiceStatus",
    loadBalancer=struct(
        "v1.LoadBalancerStatus",
        ingress=array_of(
            "v1.LoadBalancerIngress",
            ip=STRING,
            hostname=STRING,
            ipMode=STRING,
            ports=array_of("v1.PortStatus", port=INT_32, protocol=STRING, error=STRING),
        ),
    ),
    conditions=Array(CONDITION),
)
ENDPOINT_ADDRESS = struct(
    "v1.EndpointAddress", ip=STRING, hostname=STRING, nodeName=STRING, targetRef=OBJECT_REFERENCE
)
NODE_STATUS = struct(
    "v1.NodeStatus",
    capacity=QUANTITIES,
    allocatable=QUANTITIES,
    phase=STRING,
    conditions=array_of(
        "v1.NodeCondition",
        type=STRING,
        status=STRING,
        lastHeartbeatTime=TIME,
        lastTransitionTime=TIME,
        reason=STRING,
        message=STRING,
    ),
    addresses=array_of("v1.NodeAddress", type=STRING, address=STRING),
    daemonEndpoints=struct(
        "v1.NodeDaemonEndpoints",
        kubeletEndpoint=struct("v1.DaemonEndpoint", Port=INT_32),
    ),
    nodeInfo=struct(
        "v1.NodeSystemInfo",
        machineID=STRING,
        systemUUID=STRING,
        bootID=STRING,
        kernelVersion=STRING,
        osImage=STRING,
        containerRuntimeVersion=STRING,
        kubeletVersion=STRING,
        kubeProxyVersion=STRING,
        operatingSystem=STRING,
        architecture=STRING,
        swap=struct("v1.NodeSwapStatus", capacity=INT_64),
    ),
    images=array_of("v1.ContainerImage", names=STRINGS, sizeBytes=INT_64),
    volumesInUse=STRINGS,
    volumesAttached=array_of("v1.AttachedVolume", name=STRING, devicePath=STRING),
    config=opaque("v1.NodeConfigStatus"),
    runtimeHandlers=Array(opaque("v1.NodeRuntimeHandler")),
    features=opaque("v1.NodeFeatures"),
)


def _conditions(go: str, *times: str) -> Array:
    fields: dict[str, Schema] = {"type": STRING, "status": STRING, "reason": STRING}
    fields["message"] = STRING
    for name in times:
        fields[name] = TIME
    return Array(Struct(go, fields))


REPLICAS_STATUS: dict[str, Schema] = {
    "replicas": INT_32,
    "readyReplicas": INT_32,
    "availableReplicas": INT_32,
    "terminatingReplicas": INT_32,
    "observedGeneration": INT_64,
}

# --- pieces of the other API groups --------------------------------------------------------

TYPED_LOCAL_REFERENCE = struct(
    "v1.TypedLocalObjectReference", apiGroup=STRING, kind=STRING, name=STRING
)
PVC_SPEC = struct(
    "v1.PersistentVolumeClaimSpec",
    accessModes=STRINGS,
    selector=LABEL_SELECTOR,
    resources=struct("v1.VolumeResourceRequirements", limits=QUANTITIES, requests=QUANTITIES),
    volumeName=STRING,
    storageClassName=STRING,
    volumeMode=STRING,
    dataSource=TYPED_LOCAL_REFERENCE,
    dataSourceRef=struct(
        "v1.TypedObjectReference", apiGroup=STRING, kind=STRING, name=STRING, namespace=STRING
    ),
    volumeAttributesClassName=STRING,
)
PVC = struct(
    "v1.PersistentVolumeClaim",
    apiVersion=STRING,
    kind=STRING,
    metadata=OBJECT_META,
    spec=PVC_SPEC,
    status=opaque("v1.PersistentVolumeClaimStatus"),
)
JOB_SPEC = struct(
    "v1.JobSpec",
    parallelism=INT_32,
    completions=INT_32,
    activeDeadlineSeconds=INT_64,
    podFailurePolicy=opaque("v1.PodFailurePolicy"),
    successPolicy=opaque("v1.SuccessPolicy"),
    backoffLimit=INT_32,
    backoffLimitPerIndex=INT_32,
    maxFailedIndexes=INT_32,
    selector=LABEL_SELECTOR,
    manualSelector=BOOL,
    template=POD_TEMPLATE_SPEC,
    ttlSecondsAfterFinished=INT_32,
    completionMode=STRING,
    suspend=BOOL,
    podReplacementPolicy=STRING,
    managedBy=STRING,
)
JOB_STATUS = struct(
    "v1.JobStatus",
    conditions=_conditions("v1.JobCondition", "lastProbeTime", "lastTransitionTime"),
    startTime=TIME,
    completionTime=TIME,
    active=INT_32,
    succeeded=INT_32,
    failed=INT_32,
    terminating=INT_32,
    completedIndexes=STRING,
    failedIndexes=STRING,
    uncountedTerminatedPods=struct("v1.UncountedTerminatedPods", succeeded=STRINGS, failed=STRINGS),
    ready=INT_32,
)
POLICY_RULE = struct(
    "v1.PolicyRule",
    verbs=STRINGS,
    apiGroups=STRINGS,
    resources=STRINGS,
    resourceNames=STRINGS,
    nonResourceURLs=STRINGS,
)
SUBJECT = struct("v1.Subject", kind=STRING, apiGroup=STRING, name=STRING, namespace=STRING)
ROLE_REF = struct("v1.RoleRef", apiGroup=STRING, kind=STRING, name=STRING)
NETWORK_POLICY_PORT = struct(
    "v1.NetworkPolicyPort", protocol=STRING, port=INT_OR_STRING, endPort=INT_32
)
NETWORK_POLICY_PEER = struct(
    "v1.NetworkPolicyPeer",
    podSelector=LABEL_SELECTOR,
    namespaceSelector=LABEL_SELECTOR,
    ipBlock=struct("v1.IPBlock", cidr=STRING, **{"except": STRINGS}),
)
INGRESS_BACKEND = struct(
    "v1.IngressBackend",
    service=struct(
        "v1.IngressServiceBackend",
        name=STRING,
        port=struct("v1.ServiceBackendPort", name=STRING, number=INT_32),
    ),
    resource=TYPED_LOCAL_REFERENCE,
)
LIMITS = {
    name: QUANTITIES for name in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio")
}
ROLLING_UPDATE = {"maxUnavailable": INT_OR_STRING, "maxSurge": INT_OR_STRING}

# --- kinds ---------------------------------------------------------------------------------

KINDS: dict[str, Struct] = {
    "Pod": _kind("v1.Pod", spec=POD_SPEC, status=POD_STATUS),
    "Service": _kind("v1.Service", spec=SERVICE_SPEC, status=SERVICE_STATUS),
    "Endpoints": _kind(
        "v1.Endpoints",
        subsets=array_of(
            "v1.EndpointSubset",
            addresses=Array(ENDPOINT_ADDRESS),
            notReadyAddresses=Array(ENDPOINT_ADDRESS),
            ports=array_of(
                "v1.EndpointPort", name=STRING, port=INT_32, protocol=STRING, appProtocol=STRING
            ),
        ),
    ),
    "Node": _kind(
        "v1.Node",
        spec=struct(
            "v1.NodeSpec",
            podCIDR=STRING,
            podCIDRs=STRINGS,
            providerID=STRING,
            unschedulable=BOOL,
            taints=array_of("v1.Taint", key=STRING, value=STRING, effect=STRING, timeAdded=TIME),
            configSource=opaque("v1.NodeConfigSource"),
            externalID=STRING,
        ),
        status=NODE_STATUS,
    ),
    "Event": _kind(
        "v1.Event",
        involvedObject=OBJECT_REFERENCE,
        reason=STRING,
        message=STRING,
        source=struct("v1.EventSource", component=STRING, host=STRING),
        firstTimestamp=TIME,
        lastTimestamp=TIME,
        count=INT_32,
        type=STRING,
        eventTime=MICRO_TIME,
        series=struct("v1.EventSeries", count=INT_32, lastObservedTime=MICRO_TIME),
        action=STRING,
        related=OBJECT_REFERENCE,
        reportingComponent=STRING,
        reportingInstance=STRING,
    ),
    "ConfigMap": _kind("v1.ConfigMap", data=STRING_MAP, binaryData=Map(BYTES), immutable=BOOL),
    "Secret": _kind(
        "v1.Secret", data=Map(BYTES), stringData=STRING_MAP, type=STRING, immutable=BOOL
    ),
    "ServiceAccount": _kind(
        "v1.ServiceAccount",
        secrets=Array(OBJECT_REFERENCE),
        imagePullSecrets=Array(LOCAL_REFERENCE),
        automountServiceAccountToken=BOOL,
    ),
    "Namespace": _kind(
        "v1.Namespace",
        spec=struct("v1.NamespaceSpec", finalizers=STRINGS),
        status=struct(
            "v1.NamespaceStatus",
            phase=STRING,
            conditions=_conditions("v1.NamespaceCondition", "lastTransitionTime"),
        ),
    ),
    "Deployment": _kind(
        "v1.Deployment",
        spec=struct(
            "v1.DeploymentSpec",
            replicas=INT_32,
            selector=LABEL_SELECTOR,
            template=POD_TEMPLATE_SPEC,
            strategy=struct(
                "v1.DeploymentStrategy",
                type=STRING,
                rollingUpdate=struct(
                    "v1.RollingUpdateDeployment",
                    maxUnavailable=INT_OR_STRING,
                    maxSurge=INT_OR_STRING,
                ),
            ),
            minReadySeconds=INT_32,
            revisionHistoryLimit=INT_32,
            paused=BOOL,
            progressDeadlineSeconds=INT_32,
        ),
        status=Struct(
            "v1.DeploymentStatus",
            {
                **REPLICAS_STATUS,
                "updatedReplicas": INT_32,
                "unavailableReplicas": INT_32,
                "conditions": _conditions(
                    "v1.DeploymentCondition", "lastUpdateTime", "lastTransitionTime"
                ),
                "collisionCount": INT_32,
            },
        ),
    ),
    "ReplicaSet": _kind(
        "v1.ReplicaSet",
        spec=struct(
            "v1.ReplicaSetSpec",
            replicas=INT_32,
            minReadySeconds=INT_32,
            selector=LABEL_SELECTOR,
            template=POD_TEMPLATE_SPEC,
        ),
        status=Struct(
            "v1.ReplicaSetStatus",
            {
                **REPLICAS_STATUS,
                "fullyLabeledReplicas": INT_32,
                "conditions": _conditions("v1.ReplicaSetCondition", "lastTransitionTime"),
            },
        ),
    ),
    "EndpointSlice": _kind(
        "v1.EndpointSlice",
        addressType=STRING,
        endpoints=array_of(
            "v1.Endpoint",
            addresses=STRINGS,
            conditions=struct("v1.EndpointConditions", ready=BOOL, serving=BOOL, terminating=BOOL),
            hostname=STRING,
            targetRef=OBJECT_REFERENCE,
            deprecatedTopology=STRING_MAP,
            nodeName=STRING,
            zone=STRING,
            hints=struct(
                "v1.EndpointHints",
                forZones=array_of("v1.ForZone", name=STRING),
                forNodes=array_of("v1.ForNode", name=STRING),
            ),
        ),
        ports=array_of(
            "v1.EndpointPort", name=STRING, protocol=STRING, port=INT_32, appProtocol=STRING
        ),
    ),
    "Lease": _kind(
        "v1.Lease",
        spec=struct(
            "v1.LeaseSpec",
            holderIdentity=STRING,
            leaseDurationSeconds=INT_32,
            acquireTime=MICRO_TIME,
            renewTime=MICRO_TIME,
            leaseTransitions=INT_32,
            strategy=STRING,
            preferredHolder=STRING,
        ),
    ),
    "NetworkPolicy": _kind(
        "v1.NetworkPolicy",
        spec=struct(
            "v1.NetworkPolicySpec",
            podSelector=LABEL_SELECTOR,
            ingress=array_of(
                "v1.NetworkPolicyIngressRule",
                ports=Array(NETWORK_POLICY_PORT),
                **{"from": Array(NETWORK_POLICY_PEER)},
            ),
            egress=array_of(
                "v1.NetworkPolicyEgressRule",
                ports=Array(NETWORK_POLICY_PORT),
                to=Array(NETWORK_POLICY_PEER),
            ),
            policyTypes=STRINGS,
        ),
    ),
    "PersistentVolumeClaim": PVC,
    "LimitRange": _kind(
        "v1.LimitRange",
        spec=struct(
            "v1.LimitRangeSpec",
            limits=Array(Struct("v1.LimitRangeItem", {"type": STRING, **LIMITS})),
        ),
    ),
    "ResourceQuota": _kind(
        "v1.ResourceQuota",
        spec=struct(
            "v1.ResourceQuotaSpec",
            hard=QUANTITIES,
            scopes=STRINGS,
            scopeSelector=opaque("v1.ScopeSelector"),
        ),
        status=struct("v1.ResourceQuotaStatus", hard=QUANTITIES, used=QUANTITIES),
    ),
    "Role": _kind("v1.Role", rules=Array(POLICY_RULE)),
    "ClusterRole": _kind(
        "v1.ClusterRole",
        rules=Array(POLICY_RULE),
        aggregationRule=struct("v1.AggregationRule", clusterRoleSelectors=Array(LABEL_SELECTOR)),
    ),
    "RoleBinding": _kind("v1.RoleBinding", subjects=Array(SUBJECT), roleRef=ROLE_REF),
    "ClusterRoleBinding": _kind("v1.ClusterRoleBinding", subjects=Array(SUBJECT), roleRef=ROLE_REF),
    "Ingress": _kind(
        "v1.Ingress",
        spec=struct(
            "v1.IngressSpec",
            ingressClassName=STRING,
            defaultBackend=INGRESS_BACKEND,
            tls=array_of("v1.IngressTLS", hosts=STRINGS, secretName=STRING),
            rules=array_of(
                "v1.IngressRule",
                host=STRING,
                http=struct(
                    "v1.HTTPIngressRuleValue",
                    paths=array_of(
                        "v1.HTTPIngressPath",
                        path=STRING,
                        pathType=STRING,
                        backend=INGRESS_BACKEND,
                    ),
                ),
            ),
        ),
        status=opaque("v1.IngressStatus"),
    ),
    "IngressClass": _kind(
        "v1.IngressClass",
        spec=struct(
            "v1.IngressClassSpec",
            controller=STRING,
            parameters=struct(
                "v1.IngressClassParametersReference",
                apiGroup=STRING,
                kind=STRING,
                name=STRING,
                scope=STRING,
                namespace=STRING,
            ),
        ),
    ),
    "PodDisruptionBudget": _kind(
        "v1.PodDisruptionBudget",
        spec=struct(
            "v1.PodDisruptionBudgetSpec",
            minAvailable=INT_OR_STRING,
            selector=LABEL_SELECTOR,
            maxUnavailable=INT_OR_STRING,
            unhealthyPodEvictionPolicy=STRING,
        ),
        status=struct(
            "v1.PodDisruptionBudgetStatus",
            observedGeneration=INT_64,
            disruptedPods=Map(TIME),
            disruptionsAllowed=INT_32,
            currentHealthy=INT_32,
            desiredHealthy=INT_32,
            expectedPods=INT_32,
            conditions=Array(CONDITION),
        ),
    ),
    "HorizontalPodAutoscaler": _kind(
        "v2.HorizontalPodAutoscaler",
        spec=struct(
            "v2.HorizontalPodAutoscalerSpec",
            scaleTargetRef=struct(
                "v2.CrossVersionObjectReference", kind=STRING, name=STRING, apiVersion=STRING
            ),
            minReplicas=INT_32,
            maxReplicas=INT_32,
            metrics=Array(opaque("v2.MetricSpec")),
            behavior=opaque("v2.HorizontalPodAutoscalerBehavior"),
        ),
        status=opaque("v2.HorizontalPodAutoscalerStatus"),
    ),
    "APIService": _kind(
        "v1.APIService",
        spec=struct(
            "v1.APIServiceSpec",
            service=struct("v1.ServiceReference", namespace=STRING, name=STRING, port=INT_32),
            group=STRING,
            version=STRING,
            insecureSkipTLSVerify=BOOL,
            caBundle=BYTES,
            groupPriorityMinimum=INT_32,
            versionPriority=INT_32,
        ),
        status=opaque("v1.APIServiceStatus"),
    ),
    "ControllerRevision": _kind("v1.ControllerRevision", data=RAW, revision=INT_64),
    "Job": _kind("v1.Job", spec=JOB_SPEC, status=JOB_STATUS),
    "CronJob": _kind(
        "v1.CronJob",
        spec=struct(
            "v1.CronJobSpec",
            schedule=STRING,
            timeZone=STRING,
            startingDeadlineSeconds=INT_64,
            concurrencyPolicy=STRING,
            suspend=BOOL,
            jobTemplate=struct("v1.JobTemplateSpec", metadata=OBJECT_META, spec=JOB_SPEC),
            successfulJobsHistoryLimit=INT_32,
            failedJobsHistoryLimit=INT_32,
        ),
        status=struct(
            "v1.CronJobStatus",
            active=Array(OBJECT_REFERENCE),
            lastScheduleTime=TIME,
            lastSuccessfulTime=TIME,
        ),
    ),
    "ReplicationController": _kind(
        "v1.ReplicationController",
        spec=struct(
            "v1.ReplicationControllerSpec",
            replicas=INT_32,
            minReadySeconds=INT_32,
            selector=STRING_MAP,
            template=POD_TEMPLATE_SPEC,
        ),
        status=Struct(
            "v1.ReplicationControllerStatus",
            {
                **REPLICAS_STATUS,
                "fullyLabeledReplicas": INT_32,
                "conditions": _conditions(
                    "v1.ReplicationControllerCondition", "lastTransitionTime"
                ),
            },
        ),
    ),
    "StatefulSet": _kind(
        "v1.StatefulSet",
        spec=struct(
            "v1.StatefulSetSpec",
            replicas=INT_32,
            selector=LABEL_SELECTOR,
            template=POD_TEMPLATE_SPEC,
            volumeClaimTemplates=Array(PVC),
            serviceName=STRING,
            podManagementPolicy=STRING,
            updateStrategy=struct(
                "v1.StatefulSetUpdateStrategy",
                type=STRING,
                rollingUpdate=struct(
                    "v1.RollingUpdateStatefulSetStrategy",
                    partition=INT_32,
                    maxUnavailable=INT_OR_STRING,
                ),
            ),
            revisionHistoryLimit=INT_32,
            minReadySeconds=INT_32,
            persistentVolumeClaimRetentionPolicy=struct(
                "v1.StatefulSetPersistentVolumeClaimRetentionPolicy",
                whenDeleted=STRING,
                whenScaled=STRING,
            ),
            ordinals=struct("v1.StatefulSetOrdinals", start=INT_32),
        ),
        status=Struct(
            "v1.StatefulSetStatus",
            {
                **REPLICAS_STATUS,
                "currentReplicas": INT_32,
                "updatedReplicas": INT_32,
                "currentRevision": STRING,
                "updateRevision": STRING,
                "collisionCount": INT_32,
                "conditions": _conditions("v1.StatefulSetCondition", "lastTransitionTime"),
            },
        ),
    ),
    "DaemonSet": _kind(
        "v1.DaemonSet",
        spec=struct(
            "v1.DaemonSetSpec",
            selector=LABEL_SELECTOR,
            template=POD_TEMPLATE_SPEC,
            updateStrategy=struct(
                "v1.DaemonSetUpdateStrategy",
                type=STRING,
                rollingUpdate=Struct("v1.RollingUpdateDaemonSet", ROLLING_UPDATE),
            ),
            minReadySeconds=INT_32,
            revisionHistoryLimit=INT_32,
            templateGeneration=INT_64,
        ),
        status=struct(
            "v1.DaemonSetStatus",
            currentNumberScheduled=INT_32,
            numberMisscheduled=INT_32,
            desiredNumberScheduled=INT_32,
            numberReady=INT_32,
            observedGeneration=INT_64,
            updatedNumberScheduled=INT_32,
            numberAvailable=INT_32,
            numberUnavailable=INT_32,
            collisionCount=INT_32,
            conditions=_conditions("v1.DaemonSetCondition", "lastTransitionTime"),
        ),
    ),
    # bodies of subresources and options
    "Scale": _kind(
        "v1.Scale",
        spec=struct("v1.ScaleSpec", replicas=INT_32),
        status=struct("v1.ScaleStatus", replicas=INT_32, selector=STRING),
    ),
    "Binding": _kind("v1.Binding", target=OBJECT_REFERENCE),
    "DeleteOptions": struct(
        "v1.DeleteOptions",
        apiVersion=STRING,
        kind=STRING,
        gracePeriodSeconds=INT_64,
        preconditions=struct("v1.Preconditions", uid=STRING, resourceVersion=STRING),
        orphanDependents=BOOL,
        propagationPolicy=STRING,
        dryRun=STRINGS,
        ignoreStoreReadErrorWithClusterBreakingPotential=BOOL,
    ),
}

# --- type checking -------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?"
    r"([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)"
)
_ZERO: dict[str, Any] = {"string": "", "int32": 0, "int64": 0, "bool": False, "intstr": 0}


class TypeMismatch(Exception):
    """A value that Go's JSON decoder would refuse for its field."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _describe(value: Any) -> str:
    """What Go's decoder calls a JSON value in `cannot unmarshal X into ...`."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_int(value: Any, bounds: tuple[int, int]) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]
    )


def _scalar_fits(node: Scalar, value: Any) -> bool:
    kind = node.kind
    if kind == "string":
        return isinstance(value, str)
    if kind == "int32":
        return _is_int(value, INT32)
    if kind == "int64":
        return _is_int(value, INT64)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "intstr":
        return isinstance(value, str) or _is_int(value, INT32)
    if kind == "quantity":
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if kind == "time":
        return isinstance(value, str) and (value == "" or _RFC3339.fullmatch(value) is not None)
    raise AssertionError(f"unknown scalar kind {kind}")


def _zero(node: Schema) -> Any:
    if isinstance(node, Scalar):
        return _ZERO.get(node.kind, "")
    if isinstance(node, Array):
        return []
    if isinstance(node, Map | Struct):
        return {}
    return None


def _mismatch(value: Any, node: Schema, owner: str, path: str) -> TypeMismatch:
    if isinstance(node, Scalar) and node.kind == "time" and isinstance(value, str):
        return TypeMismatch(
            f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": not an RFC 3339 time '
            f"(field {path})"
        )
    return TypeMismatch(
        f"json: cannot unmarshal {_describe(value)} into Go struct field {owner}.{path} "
        f"of type {node.go}"
    )


def _check(value: Any, node: Schema, owner: str, path: str) -> Any:
    """`value` normalised (nulls as Go re-encodes them), or TypeMismatch."""
    if isinstance(node, Raw):
        return value
    if isinstance(node, Scalar):
        if not _scalar_fits(node, value):
            raise _mismatch(value, node, owner, path)
        return value
    if isinstance(node, Struct):
        if not isinstance(value, dict):
            raise _mismatch(value, node, owner, path)
        if node.fields is None:
            return value
        inner = node.go.rpartition(".")[2]
        for key in list(value):
            child = node.fields.get(key)
            if child is None:
                continue  # unknown fields are fieldValidation's business
            item = value[key]
            if item is None:
                del value[key]  # a null field is an absent one (omitempty on re-encode)
            else:
                value[key] = _check(item, child, inner, f"{path}.{key}" if path else key)
        return value
    if isinstance(node, Array):
        if not isinstance(value, list):
            raise _mismatch(value, node, owner, path)
        for i, item in enumerate(value):
            value[i] = _zero(node.item) if item is None else _check(item, node.item, owner, path)
        return value
    if not isinstance(value, dict):
        raise _mismatch(value, node, owner, path)
    for key, item in value.items():
        value[key] = _zero(node.value) if item is None else _check(item, node.value, owner, path)
    return value


def check_types(kind: str, version: str, obj: Any) -> None:
    """Normalise `obj` in place for `kind` (see the module invariants). A value that does not
    fit its Go type is the 400 upstream answers: `Deployment in version "v1" cannot be handled
    as a Deployment: json: cannot unmarshal ...`. Kinds without a schema pass unchanged."""
    node = KINDS.get(kind)
    if node is None or obj is None:
        return
    try:
        _check(obj, node, node.go.rpartition(".")[2], "")
    except TypeMismatch as mismatch:
        raise ApiError(
            400,
            "BadRequest",
            f'{kind} in version "{version}" cannot be handled as a {kind}: {mismatch.detail}',
        ) from None


# --- known fields (fieldValidation=Strict|Warn|Ignore) -------------------------------------


def _walk_unknown(value: Any, node: Schema, path: str, found: list[str], prune: bool) -> None:
    if isinstance(node, Struct) and node.fields is not None and isinstance(value, dict):
        for key in list(value):
            child = f"{path}.{key}" if path else key
            known = node.fields.get(key)
            if not path and key == "status":
                continue  # written by components, not users: typed but never pruned
            if known is None:
                found.append(child)
                if prune:
                    del value[key]
            else:
                _walk_unknown(value[key], known, child, found, prune)
    elif isinstance(node, Array) and isinstance(value, list):
        for i, item in enumerate(value):
            _walk_unknown(item, node.item, f"{path}[{i}]", found, prune)


def unknown_fields(kind: str, obj: Any, prune: bool = False) -> list[str]:
    """Paths of fields the Go type does not have (`spec.template.spec.contaners`), in document
    order; with `prune` they are also removed from `obj`. Maps' keys are the user's and never
    unknown; `status` is written by components and never reported. Kinds without a schema
    report nothing."""
    found: list[str] = []
    node = KINDS.get(kind)
    if node is not None:
        _walk_unknown(obj, node, "", found, prune)
    return found
