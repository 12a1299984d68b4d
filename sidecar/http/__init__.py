"""The lean proxy engine: the proxy listener's bytes, on asyncio protocols and llhttp (httptools).

server.py reads clients, upstream.py talks to the app over pooled keep-alive connections, framing.py decides
where messages end, tunnel.py pipes WebSockets. The decision itself is gate.py's, shared with the aiohttp
engine (app.handle), which the admin and decision listeners keep using.
"""
