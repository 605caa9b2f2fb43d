/** The NATS test harness lives with the cluster bench, which starts servers too (src/apps/natsServers.ts). */
export * from '../../src/apps/natsServers.js'
