import Logging
import RedisClient

/// What kind of Redis a node was pointed at.
public enum RedisDeployment {
    /// Throws when `redis` is a Redis Cluster node (`cluster_enabled:1`): the nodes do not route
    /// commands by hash slot yet (docs/CLUSTER.md), so against a cluster they would get MOVED
    /// answers for most keys. A Redis that cannot be reached now is not checked: the node starts
    /// and keeps trying, as it does without this check.
    public static func refuseCluster(_ redis: RedisConnection, logger: Logger) async throws {
        let info: String
        do {
            info = try await redis.send("INFO", "cluster").string ?? ""
        } catch {
            logger.debug("redis not checked for cluster mode (not reachable yet)", metadata: ["error": "\(error)"])
            return
        }
        guard info.contains("cluster_enabled:1") else { return }
        throw RedisError(
            .invalidConfiguration,
            "redis at \(redis.configuration.target) is a Redis Cluster node (cluster_enabled:1): PushFleet nodes do not route "
                + "commands by hash slot yet (docs/CLUSTER.md). Point --redis at a standalone Redis, or use --sentinel for failover")
    }
}
