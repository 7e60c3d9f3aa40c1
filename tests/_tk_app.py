"""A Tk window for desktop tests: `python _tk_app.py STATE.json` reports its state there.

Fixed geometry at the screen's top-left (there is no window manager under Xvfb, so the
position is exact). After every event it rewrites STATE.json atomically with the entry and
text contents, a log of clicks and keys, the drag handle's position, the list's scroll
position, and every widget's screen rectangle, so a test can aim at widgets and check effects.
"""

import json
import os
import sys
import tkinter as tk

state_path = sys.argv[1]
root = tk.Tk()
root.title("agent test app")
root.geometry("640x420+0+0")
log: list[str] = []

entry = tk.Entry(root, font=("DejaVu Sans", 14))
entry.place(x=20, y=20, width=300, height=34)
text = tk.Text(root, font=("DejaVu Sans", 12))
text.place(x=20, y=70, width=300, height=110)
button = tk.Label(root, text="press", bg="#ff0000", fg="#ffffff")
button.place(x=360, y=20, width=24, height=24)
decoys = [tk.Label(root, bg="#0000ff") for _ in range(2)]
decoys[0].place(x=336, y=20, width=24, height=24)
decoys[1].place(x=384, y=20, width=24, height=24)
canvas = tk.Canvas(root, bg="#eeeeee", highlightthickness=0)
canvas.place(x=360, y=70, width=260, height=200)
handle = canvas.create_rectangle(10, 10, 40, 40, fill="#00aa00")
listbox = tk.Listbox(root, font=("DejaVu Sans", 12))
listbox.place(x=20, y=200, width=300, height=200)
for i in range(200):
    listbox.insert("end", f"item {i}")

# like GTK and Qt fields: ctrl+a selects everything (Tk's default moves to line start)
entry.bind("<Control-a>", lambda e: (entry.select_range(0, "end"), entry.icursor("end"), "break")[-1])
text.bind("<Control-a>", lambda e: (text.tag_add("sel", "1.0", "end"), "break")[-1])

for name, sequence in [("click", "<Button-1>"), ("double", "<Double-Button-1>"),
                       ("middle", "<Button-2>"), ("right", "<Button-3>")]:
    button.bind(sequence, lambda e, name=name: log.append(name))
for widget, name in [(decoys[0], "decoy"), (decoys[1], "decoy")]:
    widget.bind("<Button-1>", lambda e, name=name: log.append(name))
# logged from a bind tag in front of each widget's own, which may end with "break"
root.bind_class("logkeys", "<KeyPress>", lambda e: log.append(f"key:{e.keysym}:{e.state & 0x0D}"))
for widget in (root, entry, text, listbox, canvas):
    widget.bindtags(("logkeys", *widget.bindtags()))
# Tk 8.6 cannot bind buttons 6 and 7 (the horizontal wheel) by number: log every press
listbox.bind("<ButtonPress>", lambda e: log.append(f"button{e.num}:{e.state & 1}"), add="+")

grab = {}


def press(event):
    grab["at"] = (event.x, event.y)


def motion(event):
    if "at" in grab:
        x0, y0 = grab["at"]
        canvas.move(handle, event.x - x0, event.y - y0)
        grab["at"] = (event.x, event.y)


canvas.tag_bind(handle, "<ButtonPress-1>", press)
canvas.bind("<B1-Motion>", motion)
canvas.bind("<ButtonRelease-1>", lambda e: grab.clear())


def rect(widget):
    return [widget.winfo_rootx(), widget.winfo_rooty(), widget.winfo_width(), widget.winfo_height()]


def dump():
    x1, y1, x2, y2 = canvas.coords(handle)
    state = {
        "entry": entry.get(), "text": text.get("1.0", "end-1c"), "log": log,
        "handle_centre": [canvas.winfo_rootx() + (x1 + x2) / 2, canvas.winfo_rooty() + (y1 + y2) / 2],
        "list_top": listbox.nearest(0),
        "rects": {"entry": rect(entry), "text": rect(text), "button": rect(button),
                  "canvas": rect(canvas), "listbox": rect(listbox)},
    }
    tmp = state_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_path)
    root.after(50, dump)


root.after(100, dump)
root.mainloop()
