"""The command-line client: `runvisor commands|run|runs|logs|stop|nodes|drain`, over HTTP.

It talks to a node through the documented API only (httpx), so it imports nothing of the
server beyond the default data directory (runvisor.config), where `serve` keeps admin.token.
"""
