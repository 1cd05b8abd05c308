#!/usr/bin/env bash
# Install the Debian brokers the test suite runs privately (RabbitMQ with STOMP, ActiveMQ),
# only if they are missing. The suite starts its own instances on free loopback ports; nothing
# installed here is started or enabled. Extra arguments name further Debian packages whose
# command of the same name must exist (`make bench` asks for valgrind).
set -euo pipefail

missing=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
[ -f /usr/share/activemq/bin/activemq.jar ] || missing+=(activemq)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "brokers: rabbitmq-server and activemq${*:+ and $*} already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "brokers: need root (or sudo) to apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
echo "brokers: installing ${missing[*]} from Debian"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's postinst may have started a system node on the default ports; the tests never use it.
