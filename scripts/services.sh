#!/usr/bin/env bash
# Make sure the services the tests need are up, starting any that is stopped.
# RabbitMQ 127.0.0.1:5672, Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432 (database "test").
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do up "$2" && return 0; sleep 0.1; done
  echo "services: $1 did not come up on 127.0.0.1:$2 within $3s" >&2
  return 1
}

status=0
if ! up 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for RabbitMQ 5672 90 || status=1
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
if ! up 6379; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null || true
  wait_for Redis 6379 20 || status=1
fi
if ! up 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for PostgreSQL 5432 60 || status=1
fi
exit $status
