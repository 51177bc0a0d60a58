"""The SCRAM-SHA-256 side that tests/scram_interop.rs talks to: PyPI's `scramp`.

  scram_client.py exchange USER PASSWORD
      Plays the client, one message a line: prints client-first, reads server-first, prints
      client-final, reads server-final; then prints `ok` (the server's signature verified) or
      `refused: <why>`.
  scram_client.py derive PASSWORD BASE64_SALT ITERATIONS
      Prints the RFC 5803 credential twice: as scramp makes it (make_auth_info), and derived
      step by step with hashlib and hmac (PBKDF2-HMAC-SHA256 -> ClientKey, StoredKey,
      ServerKey) from the password as scramp's SASLprep prepares it.
"""

import base64
import hashlib
import hmac
import sys

import scramp
from scramp.utils import saslprep


def send(line):
    print(line, flush=True)


def receive():
    line = sys.stdin.readline()
    if not line:
        sys.exit("scram_client.py: standard input closed")
    return line.rstrip("\n")


def exchange(user, password):
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    send(client.get_client_first())
    client.set_server_first(receive())
    send(client.get_client_final())
    try:
        client.set_server_final(receive())
    except scramp.ScramException as e:
        send(f"refused: {e}")
        return
    send("ok")


def rfc5803(iterations, salt, stored_key, server_key):
    b64 = lambda b: base64.b64encode(b).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def derive(password, salt_b64, iterations):
    salt = base64.b64decode(salt_b64)
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    salt_out, stored_key, server_key, i = mech.make_auth_info(
        password, iteration_count=iterations, salt=salt
    )
    send(rfc5803(i, salt_out, stored_key, server_key))

    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    send(rfc5803(iterations, salt, hashlib.sha256(client_key).digest(), server_key))


def main():
    if sys.argv[1:2] == ["exchange"] and len(sys.argv) == 4:
        exchange(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["derive"] and len(sys.argv) == 5:
        derive(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
