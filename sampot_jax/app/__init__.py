"""The local web page (task 'app'): sessions.py does the work, server.py serves it over HTTP,
page.html is the page (vanilla JavaScript and a canvas). docs/app.md."""
