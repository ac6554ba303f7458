"""The chat application: rooms, presence, history and resume, on tether's hub.

``server.py`` is its Python side (:func:`~tether.apps.chat.server.make_router`,
:func:`~tether.apps.chat.server.open_chat_backend`); ``static/`` holds the page and
``tether.js``, the browser client of the hub's protocol.
"""
