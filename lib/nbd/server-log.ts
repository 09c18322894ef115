/**
 * The server's logging hook: one callback, so a CLI can route messages to
 * its own logger (terminal and backup-set log file) and a library user can
 * leave it out entirely.
 */
export type ServerLogLevel = 'debug' | 'info' | 'warn' | 'error';

export type ServerLogger = (level: ServerLogLevel, message: string) => void;

export const silentLogger: ServerLogger = () => {};
