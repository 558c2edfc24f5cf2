from tracker.web.front.process import main

main()
