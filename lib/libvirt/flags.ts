/**
 * libvirt's flag and enum values under their libvirt names
 * (include/libvirt/libvirt-domain.h, libvirt-domain-checkpoint.h,
 * libvirt-qemu.h, libvirt-host.h), for the calls this client makes.
 */

// virConnectFlags
export const VIR_CONNECT_RO = 1 << 0;

// virConnectListAllDomainsFlags
export const VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1 << 0;
export const VIR_CONNECT_LIST_DOMAINS_INACTIVE = 1 << 1;
export const VIR_CONNECT_LIST_DOMAINS_PERSISTENT = 1 << 2;
export const VIR_CONNECT_LIST_DOMAINS_TRANSIENT = 1 << 3;
export const VIR_CONNECT_LIST_DOMAINS_RUNNING = 1 << 4;
export const VIR_CONNECT_LIST_DOMAINS_PAUSED = 1 << 5;
export const VIR_CONNECT_LIST_DOMAINS_SHUTOFF = 1 << 6;
export const VIR_CONNECT_LIST_DOMAINS_OTHER = 1 << 7;
export const VIR_CONNECT_LIST_DOMAINS_HAS_CHECKPOINT = 1 << 14;
export const VIR_CONNECT_LIST_DOMAINS_NO_CHECKPOINT = 1 << 15;

// virDomainState
export const VIR_DOMAIN_NOSTATE = 0;
export const VIR_DOMAIN_RUNNING = 1;
export const VIR_DOMAIN_BLOCKED = 2;
export const VIR_DOMAIN_PAUSED = 3;
export const VIR_DOMAIN_SHUTDOWN = 4;
export const VIR_DOMAIN_SHUTOFF = 5;
export const VIR_DOMAIN_CRASHED = 6;
export const VIR_DOMAIN_PMSUSPENDED = 7;

// virDomainDefineFlags
export const VIR_DOMAIN_DEFINE_VALIDATE = 1 << 0;

// virDomainCreateFlags
export const VIR_DOMAIN_NONE = 0;
export const VIR_DOMAIN_START_PAUSED = 1 << 0;
export const VIR_DOMAIN_START_AUTODESTROY = 1 << 1;
export const VIR_DOMAIN_START_BYPASS_CACHE = 1 << 2;
export const VIR_DOMAIN_START_FORCE_BOOT = 1 << 3;
export const VIR_DOMAIN_START_VALIDATE = 1 << 4;
export const VIR_DOMAIN_START_RESET_NVRAM = 1 << 5;

// virDomainDestroyFlagsValues
export const VIR_DOMAIN_DESTROY_DEFAULT = 0;
export const VIR_DOMAIN_DESTROY_GRACEFUL = 1 << 0;
export const VIR_DOMAIN_DESTROY_REMOVE_LOGS = 1 << 1;

// virDomainShutdownFlagValues
export const VIR_DOMAIN_SHUTDOWN_DEFAULT = 0;
export const VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN = 1 << 0;
export const VIR_DOMAIN_SHUTDOWN_GUEST_AGENT = 1 << 1;

// virDomainUndefineFlagsValues
export const VIR_DOMAIN_UNDEFINE_MANAGED_SAVE = 1 << 0;
export const VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA = 1 << 1;
export const VIR_DOMAIN_UNDEFINE_NVRAM = 1 << 2;
export const VIR_DOMAIN_UNDEFINE_KEEP_NVRAM = 1 << 3;
export const VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA = 1 << 4;
export const VIR_DOMAIN_UNDEFINE_TPM = 1 << 5;
export const VIR_DOMAIN_UNDEFINE_KEEP_TPM = 1 << 6;

// virDomainXMLFlags
export const VIR_DOMAIN_XML_SECURE = 1 << 0;
export const VIR_DOMAIN_XML_INACTIVE = 1 << 1;
export const VIR_DOMAIN_XML_UPDATE_CPU = 1 << 2;
export const VIR_DOMAIN_XML_MIGRATABLE = 1 << 3;

// virDomainBackupBeginFlags
export const VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL = 1 << 0;

// virDomainAbortJobFlagsValues
export const VIR_DOMAIN_ABORT_JOB_POSTCOPY = 1 << 0;

// virDomainJobType
export const VIR_DOMAIN_JOB_NONE = 0;
export const VIR_DOMAIN_JOB_BOUNDED = 1;
export const VIR_DOMAIN_JOB_UNBOUNDED = 2;
export const VIR_DOMAIN_JOB_COMPLETED = 3;
export const VIR_DOMAIN_JOB_FAILED = 4;
export const VIR_DOMAIN_JOB_CANCELLED = 5;

// virDomainGetJobStatsFlags
export const VIR_DOMAIN_JOB_STATS_COMPLETED = 1 << 0;
export const VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED = 1 << 1;

// virDomainJobOperation (the "operation" job stat)
export const VIR_DOMAIN_JOB_OPERATION_UNKNOWN = 0;
export const VIR_DOMAIN_JOB_OPERATION_BACKUP = 9;

// virDomainCheckpointCreateFlags
export const VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE = 1 << 2;

// virDomainCheckpointXMLFlags
export const VIR_DOMAIN_CHECKPOINT_XML_SECURE = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_XML_SIZE = 1 << 2;

// virDomainCheckpointListFlags
export const VIR_DOMAIN_CHECKPOINT_LIST_ROOTS = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_LIST_DESCENDANTS = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_LIST_LEAVES = 1 << 2;
export const VIR_DOMAIN_CHECKPOINT_LIST_NO_LEAVES = 1 << 3;

// virDomainCheckpointDeleteFlags
export const VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN_ONLY = 1 << 2;

// virDomainGuestInfoTypes
export const VIR_DOMAIN_GUEST_INFO_USERS = 1 << 0;
export const VIR_DOMAIN_GUEST_INFO_OS = 1 << 1;
export const VIR_DOMAIN_GUEST_INFO_TIMEZONE = 1 << 2;
export const VIR_DOMAIN_GUEST_INFO_HOSTNAME = 1 << 3;
export const VIR_DOMAIN_GUEST_INFO_FILESYSTEM = 1 << 4;
export const VIR_DOMAIN_GUEST_INFO_DISKS = 1 << 5;
export const VIR_DOMAIN_GUEST_INFO_INTERFACES = 1 << 6;

// virDomainQemuMonitorCommandFlags
export const VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT = 0;
export const VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP = 1 << 0;

// virDomainQemuAgentCommandTimeoutValues (seconds, or these specials)
export const VIR_DOMAIN_QEMU_AGENT_COMMAND_BLOCK = -2;
export const VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT = -1;
export const VIR_DOMAIN_QEMU_AGENT_COMMAND_NOWAIT = 0;
export const VIR_DOMAIN_QEMU_AGENT_COMMAND_SHUTDOWN = 60;

// virStoragePoolRefreshFlags (none defined yet)
export const VIR_STORAGE_POOL_REFRESH_DEFAULT = 0;

// virStorageXMLFlags
export const VIR_STORAGE_XML_INACTIVE = 1 << 0;
