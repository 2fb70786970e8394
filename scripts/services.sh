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

# RabbitMQ can accept connections and never answer them (a node wedged under load):
# it counts as up only once it answers the AMQP protocol header.
amqp_answers() {
  python3 - <<'PY' 2>/dev/null
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 5672), timeout=5) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        sys.exit(0 if s.recv(1) == b"\x01" else 1)  # a method frame: connection.start
except OSError:
    sys.exit(1)
PY
}

wait_for_amqp() {  # seconds
  local i
  for ((i = 0; i < $1; i += 2)); do amqp_answers && return 0; sleep 2; done
  echo "services: RabbitMQ does not answer on 127.0.0.1:5672 after $1s; if its node stays wedged," \
    "reset it (this drops its queues): rabbitmqctl stop_app; rabbitmqctl reset; rabbitmqctl start_app" >&2
  return 1
}

status=0
if ! up 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for_amqp 120 || status=1
elif ! amqp_answers; then
  echo "services: RabbitMQ accepts connections but does not answer; restarting it"
  timeout 30 rabbitmqctl stop >/dev/null 2>&1 || pkill -9 -f 'beam.smp.*rabbit' || true
  for ((i = 0; i < 50; i++)); do up 5672 || break; sleep 0.2; done
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for_amqp 180 || status=1
fi
# The test suite's own vhost (tests/rabbitmq/service.py): created once when missing,
# never per run, so the suite leaves the default vhost and other users' names alone.
vhost="${MAILBAG_TEST_VHOST:-mailbag-tests}"
if [ "$status" = 0 ] && ! timeout 60 rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx "$vhost"; then
  echo "services: creating RabbitMQ vhost $vhost for the tests"
  timeout 60 rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 || true
  timeout 60 rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null || status=1
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
