"""gunicorn's settings wherever the API is served (make run, the image, the compose file, the benchmarks):
gunicorn reads ./gunicorn.conf.py from the directory it starts in; flags given on its command line win."""

# Threaded workers: a long export stream, or a POST /predict waiting for its job, holds one thread,
# while the worker process keeps heartbeating gunicorn's arbiter. With sync workers the arbiter
# killed any response still streaming after `timeout` seconds, and the client saw a short file.
worker_class = "gthread"
threads = 8
# Seconds a worker process may fail to heartbeat the arbiter (it hangs) before it is restarted;
# under gthread this bounds a stuck process, not a request's duration.
timeout = 60
# Seconds an idle keep-alive connection stays open (parked in the poller, holding no thread). Longer than
# the clients' polling interval and a load balancer's idle timeout (60 s on common ones): at gunicorn's
# default of 2 s, a client polling every few seconds found its connection closed under it.
keepalive = 75
